"""Refactor guard: seeded prunes of the testbed reasoner, their keep-sets and pruned logits, as one JSON file.

Run it before and after a change that must not change behaviour, then compare the two files:

    python benchmarks/keepset_check.py --output before.json        # on the old commit
    python benchmarks/keepset_check.py --output after.json         # on the new one
    python benchmarks/keepset_check.py --compare before.json after.json

Each case is a small prune (RESP with regeneration, Wanda-sp, FLAP, SSGR difficulty selection, a uniform export)
on the shipped reasoner in float32 on CPU; the file holds each layer's kept query heads, KV groups and MLP
channels, and the pruned model's logits on two fixed prompts (their sum, abs-sum and a few values).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_resp import RESPConfig, RESPPruner
from optimum_resp.calibration import prompts_from_task
from optimum_resp.testbed import testbed_data_path, testbed_model_path

CASES: dict[str, dict] = {
    "resp": {"target_sparsity": 0.3, "num_stages": 2, "regeneration_milestones": [0.15]},
    "wanda-sp": {"method": "wanda-sp", "target_sparsity": 0.3},
    "flap": {"method": "flap", "target_sparsity": 0.3},
    "resp-ssgr-difficulty": {
        "target_sparsity": 0.3,
        "num_stages": 2,
        "selection_difficulty_samples": 2,
        "selection_keep_fraction": 0.5,
    },
    "resp-uniform": {
        "target_sparsity": 0.3,
        "num_stages": 2,
        "export": "uniform",
        "allocation": "uniform",
        "protected_layers": [],
    },
}
COMMON = {"num_calibration_prompts": 8, "generation": {"max_new_tokens": 256, "batch_size": 8}, "seed": 0}
PROBES = ["Question: Tom has 3 apples and buys 5 more. How many?", "Answer: 12 * 4 = 48."]


def run_case(name: str, overrides: dict) -> dict:
    path = testbed_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    values = {**COMMON, **overrides}
    config = RESPConfig.for_method(values.pop("method", "resp"), **values)
    prompts = prompts_from_task("gsm8k", testbed_data_path("gsm8k", "train"), limit=32, seed=0)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        result = RESPPruner(model, tokenizer, config, task="gsm8k").prune(prompts, output_dir=tmp)
    out: dict = {
        "keep": [
            {"q": list(k.query_heads), "kv": list(k.kv_heads), "ch": list(k.channels)}
            for k in result.plan.layers
        ],
        "logits": [],
    }
    for text in PROBES:
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = result.model(ids).logits.float()
        out["logits"].append(
            {
                "sum": logits.sum().item(),
                "abs": logits.abs().sum().item(),
                "first": logits[0, -1, :8].tolist(),
            }
        )
    return out


def compare(before: dict, after: dict) -> int:
    bad = 0
    for name in sorted(set(before) | set(after)):
        if name not in before or name not in after:
            print(f"{name}: only in one file")
            bad += 1
            continue
        same_keep = before[name]["keep"] == after[name]["keep"]
        diffs = [
            abs(a["abs"] - b["abs"]) / max(abs(a["abs"]), 1e-9)
            for a, b in zip(before[name]["logits"], after[name]["logits"])
        ]
        close = max(diffs) < 1e-5
        print(
            f"{name:24s} keep-sets {'identical' if same_keep else 'DIFFER'}; logits rel. diff {max(diffs):.2e}"
        )
        bad += not (same_keep and close)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*(json.loads(p.read_text()) for p in args.compare))
    if args.output is None:
        parser.error("--output FILE is required (or --compare BEFORE AFTER)")
    torch.set_num_threads(1)  # identical reductions whatever the machine's cores
    results = {name: run_case(name, CASES[name]) for name in args.cases}
    args.output.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.output}: {', '.join(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
