"""Accuracy of RESP and the baselines at several sparsities on the testbed reasoner, over calibration seeds.

Every method is the same `RESPPruner` pipeline with a different `RESPConfig` (so every comparison runs identical
code); calibration prompts come from the train split, each evaluation split is scored separately (never a
calibration prompt): `test` (same frame family as training), `held_out_frames` (frames and names never trained on)
and `hard` (more steps). RESP and the strongest baselines run with several
calibration seeds (mean, sd, and a Wilson interval over the pooled problems), the rest with the first seed.

Besides accuracy, every pruned model's decode speed is measured against the dense model in the same process, and
its answers' length against the dense answers: effective speedup = per-token decode speedup x (dense tokens per
answer / pruned tokens per answer), which is what a user serving it sees.

    python benchmarks/bench_quality.py                          # the full benchmark (hours on CPU, resumable)
    python benchmarks/bench_quality.py --quick                  # a smoke run in a few minutes

A stopped benchmark resumes: each finished run's record is kept in benchmarks/quality_runs/, named by a hash
of everything that decides it (method, sparsity, overrides, seed, model weights, data, settings), and the same
command later reuses it. A retrained model or new data hash differently, so stale records are never reused.
`--quick` smoke runs keep theirs apart, in quality_runs/quick/ (git-ignored).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
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

from optimum_resp.configuration_resp import METHOD_PRESETS, RESPConfig  # noqa: E402
from optimum_resp.evaluation import wilson_interval as wilson  # noqa: E402

METHODS = {name: overrides for name, (overrides, _) in METHOD_PRESETS.items()}
DESCRIPTIONS = {name: description for name, (_, description) in METHOD_PRESETS.items()}
UNIFORM = {
    k: RESPConfig(export="uniform").to_flat_dict()[k] for k in ("export", "allocation", "protected_layers")
}
"""The servable stock checkpoint (llama.cpp, stock vLLM): what a uniform export fixes (`runtimes.export_target`: the
same sizes in every layer, no layer protected), under the flat names the records are keyed by."""
SSGR = {
    "difficulty": {"selection_difficulty_samples": 4, "selection_keep_fraction": 0.5},
    "length": {"selection_length_quantiles": [0.25, 0.75]},
}
"""SSGR selections run with RESP: the hardest half of the prompts (4 samples each), or the middle half by length."""


def kept_fractions(report) -> dict[str, float]:
    """Fraction of the dense query heads, KV groups and MLP channels kept (a PruneReport), summed over layers."""
    size = report.size
    return {
        kind: sum(p.count(kind) for p in size.pruned_layers) / sum(d.count(kind) for d in size.dense_layers)
        for kind in ("query_heads", "kv_heads", "channels")
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


KEY_DEFAULTS = {"num_stages": 4}
"""RESPConfig defaults when the first records were keyed. A record is keyed by how its config differs from its
method's preset laid over these, so changing a library default re-keys (and re-runs) exactly the runs it changes
and every other record stays valid."""


def keyed_config(method: str, overrides: dict) -> RESPConfig:
    """The config a record's key names: the method's preset over KEY_DEFAULTS, then the overrides."""
    return RESPConfig(**{**KEY_DEFAULTS, **METHOD_PRESETS.lookup(method)[0], **overrides})


def canonical_overrides(method: str, overrides: dict) -> dict:
    """How `RESPConfig.for_method(method, **overrides)` (today's defaults) differs from the keyed reference: an
    override equal to the reference is dropped, so the stage sweep's reference point and the main table's row are
    one run, and a changed default appears as an override."""
    reference = keyed_config(method, {}).to_flat_dict()
    current = RESPConfig.for_method(method, **overrides).to_flat_dict()
    changed = {k: v for k, v in overrides.items() if reference.get(k) != v}
    changed |= {k: current[k] for k in KEY_DEFAULTS if current[k] != reference[k]}
    return dict(sorted(changed.items()))


def run_record_path(
    args: argparse.Namespace, method: str, sparsity: float, overrides: dict, seed: int
) -> Path:
    """Where one run's record is kept: named by everything that decides its result (weights and data by hash)."""
    model = Path(args.model)
    key = {
        "method": method,
        "sparsity": sparsity,
        "overrides": overrides,
        "seed": seed,
        "model": [_sha256(f) for f in sorted(model.glob("*.safetensors")) + [model / "config.json"]],
        "train": _sha256(Path(args.train_data)),
        "eval": {split: _sha256(Path(path)) for split, path in sorted(args.eval_data.items())},
        **{k: getattr(args, k) for k in ("num_prompts", "eval_limit", "max_new_tokens", "threads")},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return (RUNS / "quick" if args.quick else RUNS) / f"{method}-{sparsity:.2f}-s{seed}-{digest}.json"


def worker(args: argparse.Namespace) -> None:
    """One prune (or none, for sparsity 0), one evaluation per split and one speed comparison; a JSON line."""
    import psutil
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from optimum_resp import RESPPruner
    from optimum_resp.calibration import prompts_from_task
    from optimum_resp.evaluation import EvalConfig, evaluate_model
    from optimum_resp.speed import compare_speed

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    dense = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    rss_loaded = psutil.Process().memory_info().rss
    record: dict = {"method": args.method, "target": args.sparsity, "seed": args.seed}
    model = dense
    if args.sparsity > 0:
        config = keyed_config(
            args.method,
            dict(
                json.loads(args.overrides),
                target_sparsity=args.sparsity,
                num_calibration_prompts=args.num_prompts,
                generation={"max_new_tokens": args.max_new_tokens, "batch_size": 64},
                batch_size=8,
                seed=args.seed,
            ),
        )
        prompts = prompts_from_task("gsm8k", args.train_data, limit=args.num_prompts, seed=args.seed)
        result = RESPPruner(dense, tokenizer, config, task="gsm8k", generator="hf").prune(prompts)
        model = result.model
        record.update(
            sparsity=result.report.sparsity,
            stages=len(result.stages),
            prune_seconds=time.perf_counter() - start,
            kept=kept_fractions(result.report),
        )
        speed = compare_speed(dense, model, prefill_tokens=256, decode_tokens=64, repeats=3, seed=args.seed)
        record.update(decode_speedup=speed.decode_speedup, ideal_speedup=speed.ideal_speedup)
    else:
        record.update(sparsity=0.0, stages=0, prune_seconds=0.0, decode_speedup=1.0, ideal_speedup=1.0)
    record["splits"] = {}
    for split, path in json.loads(args.eval_data).items():
        evaluation = evaluate_model(
            model,
            tokenizer,
            EvalConfig(
                task="gsm8k",
                data=path,
                limit=args.eval_limit,
                generation={"max_new_tokens": args.max_new_tokens, "batch_size": 64},
                seed=args.seed,
            ),
            show_progress=False,
        )
        summary = evaluation.summary
        record["splits"][split] = {
            "accuracy": summary["accuracy"],
            "ci_low": summary["ci_low"],
            "ci_high": summary["ci_high"],
            "n": summary["n"],
            "mean_generated_tokens": summary["mean_generated_tokens"],
            "truncated_fraction": summary["truncated_fraction"],
            "correct": "".join("1" if s["correct"] else "0" for s in evaluation.samples),
        }
    record.update(
        rss_model_mib=rss_loaded / 2**20,
        parameters=model.num_parameters(),
        wall_seconds=time.time() - psutil.Process().create_time(),
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    print("RESULT " + json.dumps(record), flush=True)


def run_one(
    args, method: str, sparsity: float, overrides: dict | None = None, seed: int | None = None
) -> dict:
    """One run's record: kept from an earlier benchmark with the same settings, else from a worker subprocess.

    The worker measures its own wall time (from process start) and peak RSS, so every run is isolated.
    """
    seed = args.seeds[0] if seed is None else seed
    overrides = canonical_overrides(method, overrides or {}) if sparsity > 0 else {}
    path = run_record_path(args, method, sparsity, overrides, seed)
    label = f"{method:14s} {sparsity:.2f} seed {seed} {json.dumps(overrides)}"
    if path.exists():
        record = json.loads(path.read_text())
        print(f"{label}: kept from {path.name}", flush=True)
        args.kept[path] = record
        return record
    if args.plan:
        print(f"{label}: to run", flush=True)
        args.to_run[path] = label
        return {}
    cmd = [sys.executable, __file__, "--worker", "--method", method, "--sparsity", str(sparsity)]
    cmd += ["--overrides", json.dumps(overrides), "--seed", str(seed), "--model", str(args.model)]
    cmd += ["--train-data", str(args.train_data), "--eval-data-json", json.dumps(args.eval_data)]
    for flag in ("num_prompts", "eval_limit", "max_new_tokens", "threads"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{proc.stdout[-4000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    record = dict(json.loads(line[len("RESULT ") :]), overrides=overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)  # atomic: a killed benchmark leaves no half-written record
    accuracies = " ".join(f"{s} {r['accuracy']:.3f}" for s, r in record["splits"].items())
    print(
        f"{label}: {accuracies}; {record['wall_seconds']:.0f}s {record['peak_rss_mib']:.0f} MiB", flush=True
    )
    return record


# ---------------------------------------------------------------------------------------------- statistics


def seeds_summary(runs: list[dict], split: str) -> dict:
    """Accuracy over the seeds' runs of one setting on one split: mean, sd (0 for one seed), pooled interval."""
    accs = [r["splits"][split]["accuracy"] for r in runs]
    pooled = "".join(r["splits"][split]["correct"] for r in runs)
    low, high = wilson(pooled.count("1"), len(pooled))
    return {
        "mean": statistics.fmean(accs),
        "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "low": low,
        "high": high,
        "seeds": len(runs),
        "tokens": statistics.fmean(r["splits"][split]["mean_generated_tokens"] for r in runs),
    }


def cell(runs: list[dict], split: str, interval: bool = True) -> str:
    s = seeds_summary(runs, split)
    text = f"{s['mean']:.3f}" + (f" ± {s['sd']:.3f}" if s["seeds"] > 1 else "")
    return text + (f" [{s['low']:.2f}, {s['high']:.2f}]" if interval else "")


def stage_choice(sweep: list[dict], split: str) -> tuple[dict, dict]:
    """(the schedule with the best mean accuracy on `split`, the fewest stages whose pooled 95% interval overlaps
    the best's): more stages cost a scoring pass each, so the default is the cheapest schedule the seeds cannot
    tell from the best."""
    summary = {s["num_stages"]: seeds_summary(s["runs"], split) for s in sweep}
    best = max(sweep, key=lambda s: summary[s["num_stages"]]["mean"])
    low = summary[best["num_stages"]]["low"]
    enough = min((s for s in sweep if summary[s["num_stages"]]["high"] >= low), key=lambda s: s["num_stages"])
    return best, enough


def tokens_per_answer(record: dict) -> float:
    """Mean generated tokens per answer over every evaluated problem of the run."""
    splits = record["splits"].values()
    return sum(s["mean_generated_tokens"] * s["n"] for s in splits) / sum(s["n"] for s in splits)


def effective(runs: list[dict], dense: dict) -> tuple[float, float, float]:
    """(tokens vs dense, decode speedup, effective speedup), means over the seeds' runs."""
    ratio = statistics.fmean(tokens_per_answer(r) / tokens_per_answer(dense) for r in runs)
    decode = statistics.fmean(r["decode_speedup"] for r in runs)
    eff = statistics.fmean(
        r["decode_speedup"] * tokens_per_answer(dense) / tokens_per_answer(r) for r in runs
    )
    return ratio, decode, eff


# ---------------------------------------------------------------------------------------------- the runs


def collect(args: argparse.Namespace) -> dict:
    """Every run the benchmark needs (each kept or run), grouped as the tables use them."""

    def seeds_of(method: str) -> list[int]:
        return args.seeds if method in args.seeded_methods else args.seeds[:1]

    def setting(method: str, sparsity: float, overrides: dict | None = None, **extra) -> dict:
        runs = [run_one(args, method, sparsity, overrides, seed) for seed in seeds_of(method)]
        return dict(method=method, target=sparsity, overrides=overrides or {}, runs=runs, **extra)

    dense = run_one(args, "dense", 0.0)
    grid = [setting(m, s) for m in args.methods for s in args.sparsities]
    uniform = [setting(m, s, UNIFORM) for m in args.uniform_methods for s in args.sparsities]
    ssgr = []
    if args.ssgr:
        ssgr += [setting("wanda-sp", 0.4, {"calibration_source": "gold"}, label="wanda-sp, gold solutions")]
        ssgr += [setting("resp", 0.4, SSGR[name], label=f"resp, {name} selection") for name in SSGR]
    sweep = [setting("resp", 0.4, {"num_stages": k}, num_stages=k) for k in args.stage_sweep]
    single = args.seeds[:1]
    lora = [
        dict(run_one(args, "resp", s, {"recovery": "lora"}, single[0]), target=s)
        for s in args.lora_sparsities
    ]
    fractions = [
        dict(run_one(args, "resp", 0.4, {"regeneration_fraction": f}, single[0]), fraction=f)
        for f in args.regen_fractions
    ]
    norms = [
        dict(run_one(args, "resp", 0.4, {"normalization": n}, single[0]), normalization=n)
        for n in args.normalizations
    ]
    return dict(
        dense=dense,
        grid=grid,
        uniform=uniform,
        ssgr=ssgr,
        sweep=sweep,
        lora=lora,
        fractions=fractions,
        norms=norms,
    )


# ---------------------------------------------------------------------------------------------- rendering


def find(settings: list[dict], method: str, sparsity: float) -> dict | None:
    return next((s for s in settings if s["method"] == method and s["target"] == sparsity), None)


def command_line(arguments: str) -> str:
    """The command that reproduces the benchmark, as the blocks quote it."""
    return f"python benchmarks/bench_quality.py {arguments}".strip()


def render(args: argparse.Namespace, data: dict, command: str) -> str:
    """The RESULTS.md block."""
    dense, grid, uniform, ssgr, sweep = (data[k] for k in ("dense", "grid", "uniform", "ssgr", "sweep"))
    splits = list(dense["splits"])
    every = [dense] + [r for group in (grid, uniform, ssgr, sweep) for s in group for r in s["runs"]]
    every += data["lora"] + data["fractions"] + data["norms"]
    unique = {id(r): r for r in every}.values()
    minutes = sum(r["wall_seconds"] for r in unique) / 60
    seeds = ", ".join(map(str, args.seeds))
    lines = [
        "## Quality: RESP vs baselines on the testbed reasoner",
        "",
        f"Command: `{command_line(command)}`",
        "",
        f"Model: `{args.model_name}`. Calibration: {args.num_prompts} prompts from the train split "
        "(the harness's GSM8K prompt, chat template, thinking on), drawn by the seed. Evaluation: greedy, up to "
        f"{args.eval_limit} problems per split, max {args.max_new_tokens} new tokens, deterministic answer extraction. "
        f"Seeds {seeds} for {', '.join(args.seeded_methods)} (mean ± sd over seeds, and a 95% Wilson interval over "
        f"the pooled problems of all seeds); other methods seed {args.seeds[0]} (its own interval). Sparsity: removed "
        "decoder-linear parameters / dense decoder-linear parameters (target). Protected layers: RESP's default "
        "(the first 10% and the last) except in uniform-export rows. Every run is a subprocess: wall time covers "
        f"load + prune + eval + speed, peak memory is its max RSS. Total benchmark time: {minutes:.0f} min.",
        "",
        "Dense: "
        + "; ".join(
            f"{split} {s['accuracy']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] (n {s['n']}, "
            f"{s['mean_generated_tokens']:.0f} tokens)"
            for split, s in dense["splits"].items()
        )
        + f"; {dense['parameters']:,} parameters.",
    ]
    for split in splits:
        lines += [
            "",
            f"### Split `{split}`: accuracy",
            "",
            "| method | seeds | " + " | ".join(f"{s:.0%}" for s in args.sparsities) + " |",
            "|---|---:|" + "---:|" * len(args.sparsities),
        ]
        for method in args.methods:
            row = [find(grid, method, s) for s in args.sparsities]
            n = len(row[0]["runs"])
            lines.append(f"| {method} | {n} | " + " | ".join(cell(s["runs"], split) for s in row) + " |")
    lines += ["", "Methods: " + "; ".join(f"**{m}**: {DESCRIPTIONS[m]}" for m in args.methods) + "."]
    if uniform:
        lines += [
            "",
            "### Servable form: uniform export (stock checkpoint) beside per-layer sizes",
            "",
            "| method | export | split | " + " | ".join(f"{s:.0%}" for s in args.sparsities) + " |",
            "|---|---|---|" + "---:|" * len(args.sparsities),
        ]
        for method in args.uniform_methods:
            for name, group in (("per_layer", grid), ("uniform", uniform)):
                for split in splits:
                    cells = [find(group, method, s) for s in args.sparsities]
                    lines.append(
                        f"| {method} | {name} | {split} | "
                        + " | ".join(cell(c["runs"], split, interval=False) if c else "-" for c in cells)
                        + " |"
                    )
    lines += [
        "",
        "### Answer length and effective speedup",
        "",
        "Tokens per answer vs dense (all evaluated problems), per-token decode speedup measured against the dense "
        "model in the same process (batch 1, 64 new tokens, median of 3 interleaved pairs), and the effective "
        "speedup = decode speedup x dense tokens / pruned tokens. Means over seeds.",
        "",
        "| method | export | sparsity | tokens vs dense | decode speedup | effective speedup |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, group in (("per_layer", grid), ("uniform", uniform)):
        for s in group:
            ratio, decode, eff = effective(s["runs"], dense)
            lines.append(
                f"| {s['method']} | {name} | {s['target']:.0%} | {ratio:.2f}x | {decode:.2f}x | {eff:.2f}x |"
            )
    if ssgr:
        resp40, wanda40 = find(grid, "resp", 0.4), find(grid, "wanda-sp", 0.4)
        rows = [("wanda-sp, self-generated traces", wanda40), *((s["label"], s) for s in ssgr)]
        rows.insert(2, ("resp (no selection)", resp40))
        lines += [
            "",
            "### SSGR: self-generated vs gold calibration, and trace selection (40%)",
            "",
            "| setting | " + " | ".join(splits) + " | tokens vs dense |",
            "|---|" + "---:|" * (len(splits) + 1),
        ]
        for label, s in rows:
            if s:
                ratio = effective(s["runs"], dense)[0]
                lines.append(
                    f"| {label} | " + " | ".join(cell(s["runs"], sp) for sp in splits) + f" | {ratio:.2f}x |"
                )
    if sweep:
        lines += [
            "",
            "### Stages (RESP at 40%)",
            "",
            "| stages | " + " | ".join(splits) + " | prune s (mean) |",
            "|---:|" + "---:|" * (len(splits) + 1),
        ]
        for s in sweep:
            prune = statistics.fmean(r["prune_seconds"] for r in s["runs"])
            lines.append(
                f"| {s['num_stages']} | "
                + " | ".join(cell(s["runs"], sp) for sp in splits)
                + f" | {prune:.0f} |"
            )
        primary = args.primary_split
        best, enough = stage_choice(sweep, primary)
        lines += [
            "",
            f"Best mean on `{primary}`: {best['num_stages']} stages; the fewest stages whose pooled 95% interval "
            f"overlaps the best's: {enough['num_stages']} (the default is {RESPConfig().num_stages}).",
        ]
    lines += _single_seed_ablations(data, split=args.primary_split)
    lines += ["", f"![accuracy vs sparsity]({PLOT.name})"]
    return "\n".join(lines)


def _single_seed_ablations(data: dict, split: str) -> list[str]:
    """LoRA recovery, regenerated fraction and normalization rows (first seed), on the primary split."""
    lines: list[str] = []
    resp = {s["target"]: s["runs"][0] for s in data["grid"] if s["method"] == "resp"}

    def acc(r: dict) -> str:
        s = r["splits"][split]
        return f"{s['accuracy']:.3f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]"

    if data["lora"]:
        lines += ["", f"### RESP + LoRA recovery (split `{split}`, first seed)", ""]
        lines += ["| sparsity | RESP | RESP + LoRA | wall s |", "|---:|---:|---:|---:|"]
        for r in data["lora"]:
            plain = acc(resp[r["target"]]) if r["target"] in resp else "-"
            lines.append(f"| {r['target']:.0%} | {plain} | {acc(r)} | {r['wall_seconds']:.0f} |")
    if data["fractions"]:
        lines += [
            "",
            f"### Regenerated fraction at milestones (RESP at 40%, split `{split}`, first seed)",
            "",
        ]
        lines += ["| fraction regenerated | accuracy | wall s |", "|---:|---:|---:|"]
        lines += [f"| {r['fraction']:.0%} | {acc(r)} | {r['wall_seconds']:.0f} |" for r in data["fractions"]]
    if data["norms"]:
        lines += ["", f"### Head vs channel normalization (RESP at 40%, split `{split}`, first seed)", ""]
        lines += [
            "| normalization | accuracy | heads kept | KV groups kept | channels kept |",
            "|---|---:|---:|---:|---:|",
        ]
        rows = ([dict(resp[0.4], normalization="resp (default)")] if 0.4 in resp else []) + data["norms"]
        for r in rows:
            k = r["kept"]
            lines.append(
                f"| {r['normalization']} | {acc(r)} | {k['query_heads']:.0%} | {k['kv_heads']:.0%} | "
                f"{k['channels']:.0%} |"
            )
    return lines


def readme_summary(args: argparse.Namespace, data: dict, command: str) -> str:
    """The README's results block: accuracy per method and sparsity on the primary split, and the plot."""
    split, dense = args.primary_split, data["dense"]
    lines = [
        f"Greedy accuracy on up to {args.eval_limit} `{split}` problems of the testbed reasoner ("
        f"dense {dense['splits'][split]['accuracy']:.3f}), {args.num_prompts} calibration prompts, mean ± sd over "
        f"seeds {', '.join(map(str, args.seeds))} for {', '.join(args.seeded_methods)}, written by "
        f"`{command_line(command)}`" + " (every split, uniform exports, effective speedup, SSGR, stages: "
        "[benchmarks/RESULTS.md](benchmarks/RESULTS.md)):",
        "",
        "| method | " + " | ".join(f"{s:.0%}" for s in args.sparsities) + " |",
        "|---|" + "---:|" * len(args.sparsities),
    ]
    for method in args.methods:
        cells = [find(data["grid"], method, s) for s in args.sparsities]
        lines.append(
            f"| {method} | " + " | ".join(cell(c["runs"], split, interval=False) for c in cells) + " |"
        )
    if data["lora"]:
        by = {r["target"]: r for r in data["lora"]}
        lines.append(
            "| resp + LoRA (1 seed) | "
            + " | ".join(
                f"{by[s]['splits'][split]['accuracy']:.3f}" if s in by else "-" for s in args.sparsities
            )
            + " |"
        )
    lines += ["", "![accuracy vs sparsity](benchmarks/quality.png)"]
    return "\n".join(lines)


def plot(args: argparse.Namespace, data: dict, path: Path) -> None:
    """Accuracy against sparsity on the primary split, one line per method, a band for the seeds' spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split, base = args.primary_split, data["dense"]["splits"][args.primary_split]["accuracy"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in args.methods:
        settings = sorted((s for s in data["grid"] if s["method"] == method), key=lambda s: s["target"])
        xs = [0.0] + [s["target"] for s in settings]
        accs = [[r["splits"][split]["accuracy"] for r in s["runs"]] for s in settings]
        ys = [base] + [statistics.fmean(a) for a in accs]
        (line,) = ax.plot(xs, ys, marker="o", label=method, linewidth=2.5 if method == "resp" else 1.2)
        if any(len(a) > 1 for a in accs):
            ax.fill_between(
                xs,
                [base] + [min(a) for a in accs],
                [base] + [max(a) for a in accs],
                color=line.get_color(),
                alpha=0.15,
            )
    if data["lora"]:
        rows = sorted(data["lora"], key=lambda r: r["target"])
        ax.plot(
            [0.0] + [r["target"] for r in rows],
            [base] + [r["splits"][split]["accuracy"] for r in rows],
            marker="s",
            linestyle="--",
            label="resp + LoRA",
        )
    ax.set_xlabel("sparsity (decoder-linear parameters removed)")
    ax.set_ylabel(f"greedy accuracy, {split} split")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Testbed reasoner: accuracy vs sparsity (band: min-max over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------------------------------------- entry point


def plan_summary(kept: dict[Path, dict], to_run: dict[Path, str]) -> str:
    """One line: runs kept and still to run (keyed by record path, so a run two tables share counts once), and
    the time left at the kept runs' mean wall time."""
    line = f"{len(kept)} runs kept, {len(to_run)} to run"
    if to_run and kept:
        mean = statistics.fmean(r.get("wall_seconds", 0.0) for r in kept.values())
        line += f" (about {len(to_run) * mean / 3600:.1f} h at the kept runs' mean of {mean / 60:.1f} min)"
    return line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="resp", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--sparsity", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--eval-data-json", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help="default: the shipped testbed model")
    parser.add_argument(
        "--train-data", default=None, help="calibration prompts (default: the shipped train split)"
    )
    parser.add_argument(
        "--eval-splits", nargs="+", default=None, help="default: every shipped evaluation split"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seeded-methods", nargs="+", default=["resp", "wanda-sp", "flap"])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5])
    parser.add_argument("--uniform-methods", nargs="*", default=["resp", "wanda-sp"])
    parser.add_argument("--no-ssgr", dest="ssgr", action="store_false", help="skip the SSGR rows")
    parser.add_argument("--stage-sweep", type=int, nargs="*", default=[2, 4, 8, 16])
    parser.add_argument("--regen-fractions", type=float, nargs="*", default=[0.25, 0.5])
    parser.add_argument("--lora-sparsities", type=float, nargs="*", default=[0.3, 0.4, 0.5])
    parser.add_argument("--normalizations", nargs="*", default=["params", "none"])
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--eval-limit", type=int, default=300, help="problems per evaluation split")
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="few prompts, few problems, two methods, two seeds"
    )
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="list the runs these settings need, kept and still to run, with an estimate of the time left; "
        "run nothing",
    )
    parser.add_argument(
        "--render",
        metavar="JSON",
        default=None,
        help="re-render RESULTS.md, the README block and the plot from a saved quality.json (no runs); pass "
        "the same settings flags as the run",
    )
    return parser.parse_args(argv)


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults: the shipped model, calibration and evaluation files; the quick settings."""
    from optimum_resp.testbed import SPLITS, testbed_data_path, testbed_model_path

    args.kept, args.to_run = {}, {}  # record path -> what run_one found / (with --plan) would run
    args.model = args.model or str(testbed_model_path())
    args.model_name = Path(args.model).name
    args.train_data = args.train_data or str(testbed_data_path("gsm8k", "train"))
    splits = args.eval_splits or [s for s in SPLITS if s != "train"]
    args.eval_data = {split: str(testbed_data_path("gsm8k", split)) for split in splits}
    args.primary_split = "held_out_frames" if "held_out_frames" in args.eval_data else splits[0]
    if args.quick:
        args.methods, args.sparsities, args.seeds, args.seeded_methods = (
            ["resp", "magnitude"],
            [0.3],
            [0, 1],
            ["resp"],
        )
        args.uniform_methods, args.stage_sweep, args.lora_sparsities = ["resp"], [2], [0.3]
        args.regen_fractions, args.normalizations, args.ssgr = [], ["params"], False
        args.num_prompts, args.eval_limit = 16, 30
    unknown = set(args.methods + args.seeded_methods + args.uniform_methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"error: unknown methods {sorted(unknown)}; choose from {list(METHODS)}.")
    if args.ssgr and not {"resp", "wanda-sp"} <= set(args.methods):
        raise SystemExit(
            "error: the SSGR rows compare with resp and wanda-sp: keep both in --methods, or --no-ssgr."
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        args.eval_data = args.eval_data_json
        worker(args)
        return
    args = resolve(args)
    command = " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--render", args.render)
    )
    if args.plan:
        collect(args)
        print(plan_summary(args.kept, args.to_run))
        return
    if args.render:
        data = json.loads(Path(args.render).read_text())
    else:
        data = collect(args)
        if not args.no_write:  # the raw records first: a rendering bug must not cost hours of runs
            (HERE / "quality.json").write_text(json.dumps(data, indent=1))
    text = render(args, data, command)
    print(text)
    if not args.no_write:
        plot(args, data, PLOT)
        write_results("quality", text)
        write_results("quality-summary", readme_summary(args, data, command), README)


if __name__ == "__main__":
    main()
