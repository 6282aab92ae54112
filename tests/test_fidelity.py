"""`answer_fidelity`: teacher-forced NLL and top-1 agreement on (prompt, answer) pairs, batched and left-padded,
against a one-sequence-at-a-time reference."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model

from optimum_resp.evaluation import answer_fidelity
from optimum_resp.surgery import prune_model
from optimum_resp.testing_utils import random_plan

pytestmark = pytest.mark.usefixtures("one_thread")


def _pairs(seed: int = 0, n: int = 7) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randint(1, 128, (int(torch.randint(2, 12, (1,), generator=g)),), generator=g).tolist(),
            torch.randint(1, 128, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist(),
        )
        for _ in range(n)
    ]


def _reference(model, pairs):
    """Each pair alone, no padding, every position's logits: the definition."""
    nll, agree, tokens = 0.0, 0, 0
    with torch.no_grad():
        for prompt, answer in pairs:
            logits = model(torch.tensor([prompt + answer])).logits[0].float()
            predicted = logits[len(prompt) - 1 : len(prompt) + len(answer) - 1]
            target = torch.tensor(answer)
            nll -= torch.log_softmax(predicted, -1).gather(-1, target[:, None]).sum().item()
            agree += int((predicted.argmax(-1) == target).sum())
            tokens += len(answer)
    return nll / tokens, agree / tokens, tokens


@pytest.mark.parametrize("model_type", ["qwen3", "qwen2", "llama"])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batched_left_padded_scores_equal_one_sequence_at_a_time(model_type, batch_size):
    model, pairs = tiny_model(model_type), _pairs()
    result = answer_fidelity(model, pairs, batch_size=batch_size, show_progress=False)
    nll, agree, tokens = _reference(model, pairs)
    assert (result.tokens, result.sequences) == (tokens, len(pairs))
    assert result.nll_per_token == pytest.approx(nll, rel=1e-5)
    assert result.top1_agreement == agree


def test_a_model_agrees_fully_with_its_own_greedy_answers_and_a_pruned_one_less():
    model = tiny_model()
    prompts = [p for p, _ in _pairs(seed=1, n=5)]
    pairs = []
    with torch.no_grad():
        for prompt in prompts:
            out = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, eos_token_id=None)
            pairs.append((prompt, out[0, len(prompt) :].tolist()))
    dense = answer_fidelity(model, pairs, batch_size=2, show_progress=False)
    assert dense.top1_agreement == 1.0
    pruned = answer_fidelity(
        prune_model(model, random_plan(model.config, 0.5, seed=0)), pairs, show_progress=False
    )
    assert pruned.top1_agreement < 1.0 and pruned.nll_per_token > dense.nll_per_token
    assert math.isfinite(pruned.nll_per_token)


def test_empty_input_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="non-empty prompt and answer"):
        answer_fidelity(model, [([1, 2], [])])
    with pytest.raises(ValueError, match="batch_size"):
        answer_fidelity(model, [([1], [2])], batch_size=0)
