"""Fidelity to the dense model: how well a pruned model predicts the dense model's own greedy answers.

One teacher-forced forward pass over (prompt, dense answer) pairs gives two numbers with far less noise than
accuracy on a few hundred problems: the mean negative log-likelihood per answer token, and the fraction of
answer tokens that are the pruned model's own top-1 choice (1.0 for the dense model on its greedy answers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..validation import check_int

__all__ = ["FidelityResult", "answer_fidelity"]


@dataclass(frozen=True)
class FidelityResult:
    """Mean NLL per answer token, top-1 agreement with the answer tokens, and how many tokens were scored."""

    nll_per_token: float
    top1_agreement: float
    tokens: int
    sequences: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped longest first, so each batch holds sequences of similar length (little padding)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def answer_fidelity(
    model: Any,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 4,
    pad_token_id: int = 0,
    show_progress: bool = True,
) -> FidelityResult:
    """Score `model` on (prompt ids, answer ids) pairs: NLL of every answer token given everything before it.

    Sequences are left-padded, so every answer ends at the last position and only the answer's logits are
    computed (`logits_to_keep`): a 151k-token vocabulary never materializes logits for the prompt.
    """
    check_int("batch_size", batch_size)
    pairs = [(list(p), list(a)) for p, a in pairs]
    if not pairs or any(not p or not a for p, a in pairs):
        raise ValueError("answer_fidelity needs at least one pair, each with a non-empty prompt and answer.")
    device = next(model.parameters()).device
    nll, agree, tokens = 0.0, 0, 0
    for batch in tqdm(
        _batches([len(p) + len(a) for p, a in pairs], batch_size), desc="fidelity", disable=not show_progress
    ):
        rows = [pairs[i][0] + pairs[i][1] for i in batch]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, width - len(row) :] = torch.tensor(row)
            mask[r, width - len(row) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = (
            max(len(pairs[i][1]) for i in batch) + 1
        )  # the last prompt position predicts the first answer token
        logits = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            logits_to_keep=keep,
            use_cache=False,
        ).logits.float()
        for r, i in enumerate(batch):
            answer = torch.tensor(pairs[i][1], device=logits.device)
            n = len(answer)
            predicted = logits[r, keep - 1 - n : keep - 1]  # positions T-n-1 .. T-2 predict the answer tokens
            log_probs = torch.log_softmax(predicted, dim=-1)
            nll -= log_probs.gather(-1, answer[:, None]).sum().item()
            agree += int((predicted.argmax(-1) == answer).sum())
            tokens += n
    if not math.isfinite(nll):
        raise ValueError("The model gives an answer token zero probability (NLL is infinite).")
    return FidelityResult(nll / tokens, agree / tokens, tokens, len(pairs))
