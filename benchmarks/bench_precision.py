"""Scoring precision: RESP's Taylor importance in float32 against bf16 autocast, on the shipped testbed reasoner.

For each calibration seed (it draws the prompts from the testbed's train split and seeds the sampling), two RESP
prunes with the settings of `optimum-resp demo`,
one scoring in float32 and one under bf16 autocast (`RESPConfig.bf16_autocast`). Reported per seed: how much of
the final keep-set the two share (Jaccard over kept query heads, KV groups and MLP channels, and over the
removed ones), each model's held-out accuracy, and the time of the scoring passes. The yardstick for agreement is
two float32 prunes calibrated with different seeds (other prompts, other samples): a precision change that moves
the keep-set less than another draw of calibration data does is inside the method's own noise. The scoring times
here are of a 5.7M-parameter model, dominated by overheads; bench_memory.py times the 0.6B shape.

    python benchmarks/bench_precision.py                       # 3 seeds, 40%, 64 prompts, 200 held-out problems
    python benchmarks/bench_precision.py --seeds 0 --eval-limit 50 --no-write   # quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_resp.calibration import prompts_from_task
from optimum_resp.configuration_resp import RESPConfig
from optimum_resp.evaluation import EvalConfig, evaluate_model
from optimum_resp.pruner import RESPPruner
from optimum_resp.testbed import testbed_data_path, testbed_model_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import write_results  # noqa: E402

STRUCTURES = ("query_heads", "kv_heads", "channels")


def units(plan, dense_plan) -> tuple[set, set]:
    """Kept and removed (layer, structure, index) units of a plan against the dense model's full plan."""
    kept = {(i, s, j) for i, layer in enumerate(plan.layers) for s in STRUCTURES for j in getattr(layer, s)}
    every = {
        (i, s, j) for i, layer in enumerate(dense_plan.layers) for s in STRUCTURES for j in getattr(layer, s)
    }
    return kept, every - kept


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


def prune(args, seed: int, bf16: bool) -> dict:
    """One seeded RESP prune of the shipped reasoner; its keep-set, accuracy and scoring time."""
    path = testbed_model_path()
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = RESPConfig(
        target_sparsity=args.sparsity,
        num_stages=args.stages,
        num_calibration_prompts=args.prompts,
        generation={"max_new_tokens": 384, "batch_size": 64},
        batch_size=8,
        max_length=1024,
        seed=seed,
        bf16_autocast=bf16,
    )
    prompts = prompts_from_task("gsm8k", testbed_data_path("gsm8k", "train"), limit=args.prompts, seed=seed)
    pruner = RESPPruner(model, tokenizer, config, task="gsm8k", generator="hf")
    result = pruner.prune(prompts)
    held_out = EvalConfig(
        task="gsm8k",
        data=str(testbed_data_path("gsm8k", "test")),
        limit=args.eval_limit,
        generation={"max_new_tokens": 384, "batch_size": 64},
    )
    summary = evaluate_model(result.model, tokenizer, held_out, show_progress=False).summary
    scoring = [s.phases["scoring"] for s in result.stages]
    from optimum_resp.surgery import PruningPlan

    kept, removed = units(result.plan, PruningPlan.full(model.config))
    return {
        "seed": seed,
        "bf16": bf16,
        "kept": kept,
        "removed": removed,
        "accuracy": summary["accuracy"],
        "n": summary["n"],
        "scoring_s": sum(p.seconds for p in scoring),
        "scoring_tokens": sum(p.tokens or 0 for p in scoring),
        "loss": [s.calibration_loss for s in result.stages],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sparsity", type=float, default=0.4)
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--eval-limit", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    runs = {}
    for seed in args.seeds:
        for bf16 in (False, True):
            r = runs[seed, bf16] = prune(args, seed, bf16)
            print(
                json.dumps({k: v for k, v in r.items() if k not in ("kept", "removed")}),
                flush=True,
            )
    rows, same, resampled = [], [], []
    for seed in args.seeds:
        a, b = runs[seed, False], runs[seed, True]
        same.append((jaccard(a["kept"], b["kept"]), jaccard(a["removed"], b["removed"])))
        rows.append(
            f"| {seed} | {same[-1][0]:.3f} | {same[-1][1]:.3f} | {a['accuracy']:.3f} | {b['accuracy']:.3f} | "
            f"{a['scoring_s']:.1f} | {b['scoring_s']:.1f} | {a['scoring_s'] / b['scoring_s']:.2f}x |"
        )
    for x, y in zip(args.seeds, args.seeds[1:]):
        a, b = runs[x, False], runs[y, False]
        resampled.append((jaccard(a["kept"], b["kept"]), jaccard(a["removed"], b["removed"])))

    def mean(values) -> str:
        return f"{statistics.fmean(values):.3f}" if values else "-"

    fp32_acc = [runs[s, False]["accuracy"] for s in args.seeds]
    bf16_acc = [runs[s, True]["accuracy"] for s in args.seeds]
    n = runs[args.seeds[0], False]["n"]
    lines = [
        "## Scoring precision: float32 vs bf16 autocast (shipped testbed reasoner, CPU)",
        "",
        f"Command: `python benchmarks/bench_precision.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"RESP to {args.sparsity:.0%} in {args.stages} stages, {args.prompts} calibration prompts drawn by the seed "
        "(otherwise the demo's settings), "
        f"the scoring pass in float32 or under bf16 autocast, same seed; held-out accuracy on {n} problems "
        f"(greedy). Torch {torch.__version__}, {args.threads} threads. Jaccard over the final keep-set's units "
        "(query heads, KV groups, MLP channels), kept and removed.",
        "",
        "| seed | kept Jaccard fp32 vs bf16 | removed Jaccard | accuracy fp32 | accuracy bf16 | scoring s fp32 "
        "| scoring s bf16 | bf16 speedup |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        f"| mean | {mean([k for k, _ in same])} | {mean([r for _, r in same])} | {mean(fp32_acc)} | "
        f"{mean(bf16_acc)} | | | |",
        "",
        f"Yardstick, two float32 prunes with different seeds (other calibration prompts and samples): kept Jaccard "
        f"{mean([k for k, _ in resampled])}, removed {mean([r for _, r in resampled])} "
        f"(pairs {', '.join(f'{x}-{y}' for x, y in zip(args.seeds, args.seeds[1:])) or 'none: one seed'}).",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_results("scoring-precision", text)


if __name__ == "__main__":
    main()
