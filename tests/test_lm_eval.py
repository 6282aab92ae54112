"""Exports in lm-evaluation-harness: its `hf` model (HFLM) loads a per_layer prune, with optimum-resp imported
or through the saved modeling code alone (`trust_remote_code=True`), and scores what transformers scores.

lm-eval is a dev dependency, so these run in both CI environments.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from optimum_resp import RESPConfig, RESPPruner

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # an inference engine

PAIRS = [("Question: 2 + 3 =", " 5"), ("Tom has 4 apples.", " He eats one."), ("x", "yz")]


@pytest.fixture(scope="module")
def per_layer_folder(tmp_path_factory):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer, seed=3)
    config = RESPConfig(
        target_sparsity=0.4,
        num_stages=1,
        regeneration_milestones=[],
        num_calibration_prompts=4,
        generation={"max_new_tokens": 6, "batch_size": 4},
        batch_size=2,
        allow_unfinished_traces=True,
    )
    pruner = RESPPruner(model, tokenizer, config, generator="hf")
    result = pruner.prune([f"What is {a} plus {b}?" for a, b in [(2, 3), (7, 5), (10, 4), (6, 6)]])
    assert len(set(result.report.pruned_layers)) > 1  # sizes differ per layer: a per_layer checkpoint
    return pruner.save_pretrained(tmp_path_factory.mktemp("lm-eval") / "pruned"), result.model, tokenizer


def expected_loglikelihoods(model, tokenizer) -> list[float]:
    out = []
    for context, continuation in PAIRS:
        ctx = tokenizer(context)["input_ids"]
        whole = tokenizer(context + continuation)["input_ids"]
        with torch.no_grad():
            logprobs = model(torch.tensor([whole])).logits[0].float().log_softmax(-1)
        out.append(sum(logprobs[i - 1, whole[i]].item() for i in range(len(ctx), len(whole))))
    return out


def requests() -> list[Instance]:
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(PAIRS)]


def test_hflm_loads_a_per_layer_export_and_scores_as_transformers(per_layer_folder):
    folder, model, tokenizer = per_layer_folder
    lm = HFLM(pretrained=str(folder), device="cpu", batch_size=1, dtype="float32")  # optimum_resp imported
    assert type(lm.model).__name__ == "RESPQwen3ForCausalLM"
    got = [ll for ll, _ in lm.loglikelihood(requests())]
    assert got == pytest.approx(expected_loglikelihoods(model, tokenizer), abs=1e-4)
    prompt = "Question: 2 + 3 ="
    [text] = lm.generate_until(
        [Instance("generate_until", {}, (prompt, {"until": ["\n\n"], "max_gen_toks": 6}), 0)]
    )
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        greedy = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1] :]
    assert text == tokenizer.decode(greedy, skip_special_tokens=True).split("\n\n")[0]


def test_hflm_loads_a_per_layer_export_without_optimum_resp(per_layer_folder):
    """`trust_remote_code=True` runs the modeling code saved beside the weights; optimum-resp is not importable."""
    folder, model, tokenizer = per_layer_folder
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["optimum_resp"] = None  # as if it were not installed
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
        lm = HFLM(pretrained={str(folder)!r}, trust_remote_code=True, device="cpu", batch_size=1, dtype="float32")
        reqs = [Instance("loglikelihood", {{}}, tuple(p), i) for i, p in enumerate({json.dumps(PAIRS)})]
        print(json.dumps({{"class": type(lm.model).__module__, "ll": [ll for ll, _ in lm.loglikelihood(reqs)]}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["class"].startswith("transformers_modules")  # the saved code, not optimum_resp's
    assert out["ll"] == pytest.approx(expected_loglikelihoods(model, tokenizer), abs=1e-4)
