"""Accuracy of RESP and the baselines at several sparsities, on the shipped reasoning model.

Every method is the same `RESPPruner` pipeline with a different `RESPConfig` (so every comparison
runs identical code); calibration prompts come from the train split, evaluation uses the held-out
split (never a calibration prompt). Each (method, sparsity) runs in its own subprocess so its wall
time and peak memory (max RSS) are its own. Results: a table and ablations in benchmarks/RESULTS.md
(this script's block) and a PNG plot of accuracy against sparsity.

    python benchmarks/bench_quality.py                          # the full benchmark (about an hour on CPU)
    python benchmarks/bench_quality.py --quick                  # a smoke run in a few minutes

A stopped benchmark resumes: each finished run's record is kept in benchmarks/quality_runs/, named by a hash
of everything that decides it (method, sparsity, overrides, model weights, data, settings), and the same
command later reuses it. A retrained model or new data hash differently, so stale records are never reused.
`--quick` smoke runs keep theirs apart, in quality_runs/quick/ (git-ignored).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
PLOT = HERE / "quality.png"
RUNS = HERE / "quality_runs"  # one record per finished run: a stopped benchmark resumes from here
README = HERE.parent / "README.md"

from results_md import write_results  # noqa: E402

from optimum_resp.configuration_resp import METHOD_PRESETS  # noqa: E402

METHODS = {name: overrides for name, (overrides, _) in METHOD_PRESETS.items()}
DESCRIPTIONS = {name: description for name, (_, description) in METHOD_PRESETS.items()}


def kept_fractions(report) -> dict[str, float]:
    """Fraction of the dense query heads, KV groups and MLP channels kept (a PruneReport), summed over layers."""
    size = report.size
    return {
        kind: sum(p.count(kind) for p in size.pruned_layers) / sum(d.count(kind) for d in size.dense_layers)
        for kind in ("query_heads", "kv_heads", "channels")
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_record_path(args: argparse.Namespace, method: str, sparsity: float, overrides: dict) -> Path:
    """Where one run's record is kept: named by everything that decides its result (weights and data by hash)."""
    model = Path(args.model)
    key = {
        "method": method,
        "sparsity": sparsity,
        "overrides": overrides,
        "model": [_sha256(f) for f in sorted(model.glob("*.safetensors")) + [model / "config.json"]],
        "train": _sha256(Path(args.train_data)),
        "test": _sha256(Path(args.test_data)),
        **{k: getattr(args, k) for k in ("num_prompts", "eval_limit", "max_new_tokens", "seed", "threads")},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return (RUNS / "quick" if args.quick else RUNS) / f"{method}-{sparsity:.2f}-{digest}.json"


def worker(args: argparse.Namespace) -> None:
    """One prune (or none, for sparsity 0) and one evaluation; prints a JSON line."""
    import psutil
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from optimum_resp import RESPConfig, RESPPruner
    from optimum_resp.calibration import prompts_from_task
    from optimum_resp.evaluation import EvalConfig, evaluate_model

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    rss_loaded = psutil.Process().memory_info().rss
    record: dict = {"method": args.method, "target": args.sparsity}
    if args.sparsity > 0:
        config = RESPConfig.for_method(
            args.method,
            **json.loads(args.overrides),
            target_sparsity=args.sparsity,
            num_calibration_prompts=args.num_prompts,
            generation={"max_new_tokens": args.max_new_tokens, "batch_size": 64},
            batch_size=8,
            seed=args.seed,
        )
        prompts = prompts_from_task("gsm8k", args.train_data, limit=args.num_prompts, seed=args.seed)
        pruner = RESPPruner(model, tokenizer, config, task="gsm8k", generator="hf")
        result = pruner.prune(prompts)
        model = result.model
        record.update(
            sparsity=result.report.sparsity,
            stages=len(result.stages),
            prune_seconds=time.perf_counter() - start,
            kept=kept_fractions(result.report),
        )
    else:
        record.update(sparsity=0.0, stages=0, prune_seconds=0.0)
    evaluation = evaluate_model(
        model,
        tokenizer,
        EvalConfig(
            task="gsm8k",
            data=args.test_data,
            limit=args.eval_limit,
            generation={"max_new_tokens": args.max_new_tokens, "batch_size": 64},
            seed=args.seed,
        ),
        show_progress=False,
    )
    record.update(
        accuracy=evaluation.summary["accuracy"],
        ci_low=evaluation.summary["ci_low"],
        ci_high=evaluation.summary["ci_high"],
        n=evaluation.summary["n"],
        mean_generated_tokens=evaluation.summary["mean_generated_tokens"],
        rss_model_mib=rss_loaded / 2**20,
        parameters=model.num_parameters(),
        wall_seconds=time.time() - psutil.Process().create_time(),
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    print("RESULT " + json.dumps(record), flush=True)


def run_one(args, method: str, sparsity: float, overrides: dict | None = None) -> dict:
    """One run's record: kept from an earlier benchmark with the same settings, else from a worker subprocess.

    The worker measures its own wall time (from process start) and peak RSS, so every run is isolated.
    """
    path = run_record_path(args, method, sparsity, overrides or {})
    if path.exists():
        record = json.loads(path.read_text())
        print(f"{method:14s} {sparsity:.2f} {json.dumps(overrides or {})}: kept from {path.name}", flush=True)
        return record
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--method",
        method,
        "--sparsity",
        str(sparsity),
        "--overrides",
        json.dumps(overrides or {}),
        "--model",
        str(args.model),
        "--train-data",
        str(args.train_data),
        "--test-data",
        str(args.test_data),
        "--num-prompts",
        str(args.num_prompts),
        "--eval-limit",
        str(args.eval_limit),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
    ]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} at {sparsity} failed:\n{proc.stdout[-4000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    record = json.loads(line[len("RESULT ") :])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)  # atomic: a killed benchmark leaves no half-written record
    print(
        f"{method:14s} {sparsity:.2f} {json.dumps(overrides or {})}: acc {record['accuracy']:.3f} "
        f"[{record['ci_low']:.3f}, {record['ci_high']:.3f}] sparsity {record['sparsity']:.3f} "
        f"{record['wall_seconds']:.0f}s {record['peak_rss_mib']:.0f} MiB",
        flush=True,
    )
    return record


def plot(records: list[dict], lora: list[dict], dense: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in METHODS:
        rows = sorted(
            (r for r in records if r["method"] == method and not r.get("ablation")), key=lambda r: r["target"]
        )
        if not rows:
            continue
        xs = [0.0] + [r["target"] for r in rows]
        ys = [dense["accuracy"]] + [r["accuracy"] for r in rows]
        ax.plot(xs, ys, marker="o", label=method, linewidth=2.5 if method == "resp" else 1.2)
    if lora:
        rows = sorted(lora, key=lambda r: r["target"])
        ax.plot(
            [0.0] + [r["target"] for r in rows],
            [dense["accuracy"]] + [r["accuracy"] for r in rows],
            marker="s",
            linestyle="--",
            label="resp + LoRA",
        )
    ax.set_xlabel("sparsity (decoder-linear parameters removed)")
    ax.set_ylabel("greedy accuracy, held-out split")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Shipped tiny reasoner: accuracy vs sparsity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="resp")
    parser.add_argument("--overrides", default="{}")
    parser.add_argument("--sparsity", type=float, default=0.0)
    parser.add_argument("--model", default=None, help="default: the shipped testbed model")
    parser.add_argument("--train-data", default=None)
    parser.add_argument("--test-data", default=None)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5])
    parser.add_argument("--stage-sweep", type=int, nargs="*", default=[4, 8, 16, 32])
    parser.add_argument("--regen-fractions", type=float, nargs="*", default=[0.25, 0.5])
    parser.add_argument("--lora-sparsities", type=float, nargs="*", default=[0.3, 0.4, 0.5])
    parser.add_argument("--normalizations", nargs="*", default=["params", "none"])
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--eval-limit", type=int, default=500)
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="few prompts, few problems, two methods")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--render",
        metavar="JSON",
        default=None,
        help="re-render RESULTS.md, the README block and the plot from a saved quality.json (no runs); pass "
        "the same settings flags as the run",
    )
    args = parser.parse_args()
    from optimum_resp.testbed import testbed_data_path, testbed_model_path

    args.model = args.model or str(testbed_model_path())
    args.train_data = args.train_data or str(testbed_data_path("gsm8k", "train"))
    args.test_data = args.test_data or str(testbed_data_path("gsm8k", "test"))
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.methods, args.sparsities, args.stage_sweep, args.lora_sparsities, args.normalizations = (
            ["resp", "magnitude"],
            [0.3],
            [2],
            [0.3],
            ["params"],
        )
        args.num_prompts, args.eval_limit = 16, 50

    if args.render:
        data = json.loads(Path(args.render).read_text())
        render_and_write(args, **data)
        return
    dense = run_one(args, "dense", 0.0)
    records = []
    for method in args.methods:
        for sparsity in args.sparsities:
            records.append(run_one(args, method, sparsity))
    sweep = [
        dict(run_one(args, "resp", 0.4, {"num_stages": k}), num_stages=k, ablation=True)
        for k in args.stage_sweep
    ]
    lora = [dict(run_one(args, "resp", s, {"recovery": "lora"}), ablation=True) for s in args.lora_sparsities]
    fractions = [
        dict(run_one(args, "resp", 0.4, {"regeneration_fraction": f}), fraction=f, ablation=True)
        for f in args.regen_fractions
    ]
    norms = [
        dict(run_one(args, "resp", 0.4, {"normalization": n}), normalization=n, ablation=True)
        for n in args.normalizations
    ]
    data = dict(
        dense=dense, runs=records, stage_sweep=sweep, lora=lora, fractions=fractions, normalizations=norms
    )
    if not args.no_write:  # the raw records first: a rendering bug must not cost the hour of runs
        (HERE / "quality.json").write_text(json.dumps(data, indent=1))
    render_and_write(args, **data)


def render_and_write(
    args: argparse.Namespace,
    dense: dict,
    runs: list[dict],
    stage_sweep: list[dict],
    lora: list[dict],
    fractions: list[dict],
    normalizations: list[dict],
) -> None:
    """The RESULTS.md block, the README summary block and the plot, from the collected records."""
    records, sweep, norms = runs, stage_sweep, normalizations
    every = [dense, *records, *sweep, *lora, *fractions, *norms]
    minutes = sum(r["wall_seconds"] for r in every) / 60
    command = " ".join(a for a in sys.argv[1:] if a != "--render" and a != args.render)
    lines = [
        "## Quality: RESP vs baselines on the shipped tiny reasoner",
        "",
        f"Command: `python benchmarks/bench_quality.py {command}`".rstrip(),
        "",
        f"Calibration: {args.num_prompts} prompts from the testbed train split (the harness's GSM8K prompt, chat "
        f"template, thinking on). Evaluation: greedy, {dense['n']} held-out problems, max {args.max_new_tokens} new "
        "tokens, deterministic answer extraction; 95% Wilson intervals. Sparsity: removed decoder-linear parameters / "
        "dense decoder-linear parameters (target; the achieved value is within one structure of it). Protected layers: "
        "RESP's default (the first 10% and the last). Every run is a subprocess: wall time covers load + prune + eval, "
        f"peak memory is its max RSS. Total benchmark time: {minutes:.0f} min.",
        "",
        f"Dense: accuracy {dense['accuracy']:.3f} [{dense['ci_low']:.3f}, {dense['ci_high']:.3f}], "
        f"mean trace {dense['mean_generated_tokens']:.0f} tokens, {dense['parameters']:,} parameters.",
        "",
        "| method | "
        + " | ".join(f"{s:.0%}" for s in args.sparsities)
        + " | wall s (mean) | peak MiB (max) |",
        "|---|" + "---:|" * (len(args.sparsities) + 2),
    ]
    for method in args.methods:
        rows = {r["target"]: r for r in records if r["method"] == method}
        cells = [
            f"{rows[s]['accuracy']:.3f} [{rows[s]['ci_low']:.2f}, {rows[s]['ci_high']:.2f}]"
            for s in args.sparsities
        ]
        wall = sum(r["wall_seconds"] for r in rows.values()) / len(rows)
        peak = max(r["peak_rss_mib"] for r in rows.values())
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {wall:.0f} | {peak:.0f} |")
    lines += ["", "Methods: " + "; ".join(f"**{m}**: {DESCRIPTIONS[m]}" for m in args.methods) + "."]
    if 0.4 in args.sparsities and "resp" in args.methods:
        resp40 = next(r for r in records if r["method"] == "resp" and r["target"] == 0.4)
        lines += [
            "",
            f"RESP at 40%: {resp40['accuracy'] / max(dense['accuracy'], 1e-9):.1%} of dense accuracy.",
        ]
    lines += ["", "### Stages (RESP at 40%)", "", "| stages | accuracy | wall s |", "|---:|---:|---:|"]
    lines += [
        f"| {r['num_stages']} | {r['accuracy']:.3f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] | {r['wall_seconds']:.0f} |"
        for r in sweep
    ]
    if lora:
        lines += [
            "",
            "### RESP + LoRA recovery (self-distillation on the dense model's traces, merged)",
            "",
            "| sparsity | RESP | RESP + LoRA | wall s |",
            "|---:|---:|---:|---:|",
        ]
        for r in lora:
            plain = next((x for x in records if x["method"] == "resp" and x["target"] == r["target"]), None)
            plain_acc = f"{plain['accuracy']:.3f}" if plain else "-"
            lines.append(
                f"| {r['target']:.0%} | {plain_acc} | {r['accuracy']:.3f} [{r['ci_low']:.2f}, "
                f"{r['ci_high']:.2f}] | {r['wall_seconds']:.0f} |"
            )
    if fractions:
        lines += [
            "",
            "### Regenerated fraction at milestones (RESP at 40%)",
            "",
            "| fraction of calibration traces regenerated | accuracy | wall s |",
            "|---:|---:|---:|",
        ]
        lines += [
            f"| {r['fraction']:.0%} | {r['accuracy']:.3f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] | {r['wall_seconds']:.0f} |"
            for r in fractions
        ]
    if norms:
        resp40 = next((r for r in records if r["method"] == "resp" and r["target"] == 0.4), None)
        lines += [
            "",
            "### Head vs channel normalization (RESP at 40%)",
            "",
            "| normalization | accuracy | heads kept | KV groups kept | channels kept |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in ([dict(resp40, normalization="resp (default)")] if resp40 else []) + norms:
            lines.append(
                f"| {r['normalization']} | {r['accuracy']:.3f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] | "
                f"{r['kept']['query_heads']:.0%} | {r['kept']['kv_heads']:.0%} | {r['kept']['channels']:.0%} |"
            )
    lines += ["", f"![accuracy vs sparsity]({PLOT.name})"]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        plot(records, lora, dense, PLOT)
        write_results("quality", text)
        write_results("quality-summary", readme_summary(args, dense, records, lora, command), README)


def readme_summary(args, dense: dict, records: list[dict], lora: list[dict], command: str) -> str:
    """The README's results block: accuracy per method and sparsity, and the plot."""
    cols = args.sparsities
    lines = [
        f"Greedy accuracy on {dense['n']} held-out problems of the shipped reasoner (dense: "
        f"{dense['accuracy']:.3f}), {args.num_prompts} calibration prompts, written by "
        f"`python benchmarks/bench_quality.py {command}`".rstrip()
        + " (intervals, ablations, cost: "
        "[benchmarks/RESULTS.md](benchmarks/RESULTS.md)):",
        "",
        "| method | " + " | ".join(f"{s:.0%}" for s in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for method in args.methods:
        rows = {r["target"]: r for r in records if r["method"] == method}
        lines.append(
            f"| {method} | " + " | ".join(f"{rows[s]['accuracy']:.3f}" for s in cols if s in rows) + " |"
        )
    if lora:
        by = {r["target"]: r for r in lora}
        lines.append(
            "| resp + LoRA | "
            + " | ".join(f"{by[s]['accuracy']:.3f}" if s in by else "-" for s in cols)
            + " |"
        )
    lines += ["", "![accuracy vs sparsity](benchmarks/quality.png)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
