"""The quality benchmark's rendering: the RESULTS.md block, the README summary and the plot, from its records."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from quality_records import DESCRIPTIONS
from quality_stats import effective, seeds_summary, stage_choice

from optimum_resp.configuration_resp import RESPConfig

PLOT = Path(__file__).resolve().parent / "quality.png"


def cell(runs: list[dict], split: str, interval: bool = True) -> str:
    s = seeds_summary(runs, split)
    text = f"{s['mean']:.3f}" + (f" ± {s['sd']:.3f}" if s["seeds"] > 1 else "")
    return text + (f" [{s['low']:.2f}, {s['high']:.2f}]" if interval else "")


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
    every += [r for s in data.get("recovery", []) for r in s["runs"]]
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
    lines += _recovery_table(data, split=args.primary_split)
    lines += _single_seed_ablations(data, split=args.primary_split)
    lines += ["", f"![accuracy vs sparsity]({PLOT.name})"]
    return "\n".join(lines)


def _recovery_table(data: dict, split: str) -> list[str]:
    """RESP alone beside RESP + each recovery method and token budget, over RESP's seeds, with what each cost."""
    if not data.get("recovery"):
        return []
    lines = [
        "",
        f"### Recovery after RESP (split `{split}`, mean ± sd over seeds)",
        "",
        "Token budget: decode tokens learned from per epoch (dense traces: the 128 calibration traces alone; more: "
        "the dense model also answers further train prompts). lora: hard labels on those traces, LoRA rank 8, "
        "merged; distill: KL to the dense model's top-32 next-token distributions, all parameters. Recovery s: "
        "training only; wall s: the whole run (prune, recovery, evaluation, speed).",
        "",
        "| sparsity | recipe | budget (tokens learned) | accuracy | tokens / answer | KL to dense before -> after | "
        "recovery s | wall s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]

    def mean(values: list[float]) -> float:
        return statistics.fmean(values) if values else float("nan")

    targets = sorted({s["target"] for s in data["recovery"]})
    for target in targets:
        alone = find(data["grid"], "resp", target)
        rows = ([dict(alone, recovery="none", tokens=0)] if alone else []) + [
            s for s in data["recovery"] if s["target"] == target
        ]
        for row in rows:
            runs = row["runs"]
            rec = [r.get("recovery") or {} for r in runs]
            kl = [(x["kl_before"], x["kl_after"]) for x in rec if x.get("kl_before") is not None]
            kl_text = f"{mean([a for a, _ in kl]):.4f} -> {mean([b for _, b in kl]):.4f}" if kl else "-"
            tokens = mean([x["tokens"] for x in rec if x.get("tokens")])
            budget = (
                "-"
                if row["recovery"] == "none"
                else (f"{row['tokens']:,}" if row["tokens"] else "dense traces")
            )
            if tokens == tokens:  # measured (records written before recovery kept its figures have none)
                budget += f" ({tokens / 1000:.0f}k)"
            seconds = mean([x["seconds"] for x in rec if "seconds" in x])
            lines.append(
                f"| {target:.0%} | {'RESP' if row['recovery'] == 'none' else 'RESP + ' + row['recovery']} | {budget} | "
                f"{cell(runs, split)} | {mean([r['splits'][split]['mean_generated_tokens'] for r in runs]):.0f} | "
                f"{kl_text} | {'-' if seconds != seconds else f'{seconds:.0f}'} | "
                f"{mean([r['wall_seconds'] for r in runs]):.0f} |"
            )
    return lines


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
