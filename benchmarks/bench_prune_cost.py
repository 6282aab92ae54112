"""What a whole RESP prune costs: every phase timed, with its peak memory, on a random-weight model of a
real shape, for each trace generator available.

A random-weight model never ends its answers, so every trace runs to `--new-tokens`: the worst case for
generation and for the scoring passes. The pruner's own phase records (`StageRecord.phases`: dense
generation, regeneration, scoring, allocation, surgery, checkpoint) give the table; the final export
(`save_pretrained`) is timed here. The model is saved and loaded with `RESPPruner.from_pretrained`, as the CLI
does, so the pruner owns it and frees the dense weights after stage 1; the scoring peak is set beside the
estimate the prune checked before any work. From the measured scoring passes it derives the cost of one pass per
1k trace tokens and per billion parameters, and from that the cost of the reference schedule (112 full
passes over the same traces, 5 regenerations) beside ours. Writes the `prune-cost-<device>` block of
benchmarks/RESULTS.md.

    python benchmarks/bench_prune_cost.py                                   # CPU: Qwen3-0.6B shape, 16 x 256
    python benchmarks/bench_prune_cost.py --shape qwen3-8b --prompts 500 --new-tokens 2048   # a GPU
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

from optimum_resp import RESPConfig, RESPPruner
from optimum_resp.calibration import GENERATORS, get_generator
from optimum_resp.integrations.vllm.engine import vllm_installed
from optimum_resp.memory import release_heap
from optimum_resp.profiling import PhaseClock, peak_memory_supported
from optimum_resp.testing_utils import word_level_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import SHAPES, build_dense  # noqa: E402
from results_md import write_results  # noqa: E402

# The RESP authors' schedule: 112 pruning steps, each a full-gradient pass over the calibration traces,
# with the traces regenerated at five milestones (see ../shared/METHOD.md).
REFERENCE_PASSES = 112
REFERENCE_REGENERATIONS = 5
PHASE_ORDER = (
    "selection",
    "dense generation",
    "regeneration",
    "scoring",
    "allocation",
    "surgery",
    "checkpoint",
)


def one_prune(args, generator: str, dtype: torch.dtype, device: str, folder: Path) -> dict:
    """A complete RESP prune (checkpointed to a temporary folder) and its export; the phases it spent."""
    if not (folder / "config.json").exists():
        build_dense(args.shape, dtype, "cpu").save_pretrained(folder)
    release_heap()  # the built model's freed heap would otherwise stay in the resident set of every phase
    before = (
        torch.cuda.memory_allocated(device)
        if device.startswith("cuda")
        else psutil.Process().memory_info().rss
    )
    tokenizer = word_level_tokenizer(SHAPES[args.shape]["vocab_size"])
    gen = torch.Generator().manual_seed(0)
    prompts = [
        " ".join(f"t{i}" for i in torch.randint(0, 1000, (args.prompt_tokens,), generator=gen).tolist())
        for _ in range(args.prompts)
    ]
    config = RESPConfig(
        target_sparsity=args.sparsity,
        num_stages=args.stages,
        num_calibration_prompts=args.prompts,
        generation={"max_new_tokens": args.new_tokens, "do_sample": False, "batch_size": args.prompts},
        batch_size=args.batch_size,
        allow_unfinished_traces=True,  # random weights never end an answer: every trace runs to the limit
        max_length=args.prompt_tokens + args.new_tokens + 64,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    pruner = RESPPruner.from_pretrained(
        folder, config, tokenizer=tokenizer, generator=get_generator(generator), dtype=dtype
    )
    pruner.model.to(device)
    weights = sum(p.numel() * p.element_size() for p in pruner.model.parameters())
    clock = PhaseClock(device)
    with tempfile.TemporaryDirectory(prefix="bench-prune-cost-") as tmp:
        start = time.perf_counter()
        result = pruner.prune(prompts, output_dir=Path(tmp) / "run")
        with clock("export") as cost:
            pruner.save_pretrained(Path(tmp) / "run")
        total = time.perf_counter() - start
    phases: dict[str, list] = {}
    for stage in result.report.stages:
        for name, c in stage.phases.items():
            phases.setdefault(name, []).append(c)
    phases["export"] = [cost]
    return {
        "generator": generator,
        "total_s": total,
        "phases": phases,
        "sparsity": result.report.sparsity,
        "params": result.report.dense_total_params,
        "stages": len(result.report.stages),
        "loaded_bytes": before + weights,  # weights are paged in lazily: counted in full
        "estimate": pruner.scoring_memory,
    }


def summarize(run: dict) -> list[dict]:
    rows = []
    for name in [*PHASE_ORDER, "export"]:
        costs = run["phases"].get(name)
        if not costs:
            continue
        peaks = [c.peak_memory_bytes for c in costs if c.peak_memory_bytes is not None]
        tokens = [c.tokens for c in costs if c.tokens is not None]
        rows.append(
            {
                "phase": name,
                "count": len(costs),
                "total_s": sum(c.seconds for c in costs),
                "mean_s": sum(c.seconds for c in costs) / len(costs),
                "peak_gib": max(peaks) / 2**30 if peaks else None,
                "tokens": sum(tokens) if tokens else None,
            }
        )
    return rows


def render(args, runs: list[dict], device: str, dtype: str, command: str) -> str:
    cfg = SHAPES[args.shape]
    memory = "CUDA allocator peak" if device.startswith("cuda") else "peak RSS of the process (VmHWM)"
    where = (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    lines = [
        f"## Prune cost: random-weight {args.shape} shape, {device} ({where}), {dtype}",
        "",
        f"Command: `{command}`",
        "",
        f"RESP to {args.sparsity:.0%} in {args.stages} stages (regeneration at the default milestones), "
        f"{args.prompts} prompts of {args.prompt_tokens} tokens, greedy, every trace run to {args.new_tokens} new "
        f"tokens (random weights never end), scoring batch {args.batch_size}"
        f"{'' if args.gradient_checkpointing is None else f', gradient checkpointing {args.gradient_checkpointing}'}"
        f"; shape: {cfg['num_hidden_layers']} "
        f"layers, hidden {cfg['hidden_size']}, vocab {cfg['vocab_size']}. Peak memory: {memory} during the phase.",
    ]
    for run in runs:
        params_b = run["params"] / 1e9
        lines += [
            "",
            f"### generator `{run['generator']}`: {run['total_s']:.0f} s in all, sparsity {run['sparsity']:.1%}, "
            f"{run['params'] / 1e6:.0f}M parameters",
            "",
            "| phase | times | total (s) | mean (s) | peak memory (GiB) | tokens |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        rows = summarize(run)
        for r in rows:
            peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
            tokens = "-" if r["tokens"] is None else str(r["tokens"])
            lines.append(
                f"| {r['phase']} | {r['count']} | {r['total_s']:.1f} | {r['mean_s']:.1f} | {peak} | {tokens} |"
            )
        by_name = {r["phase"]: r for r in rows}
        scoring = by_name.get("scoring")
        if scoring and scoring["tokens"]:
            per_pass_tokens = scoring["tokens"] / scoring["count"]
            per_k = scoring["mean_s"] / (per_pass_tokens / 1000)
            per_k_b = per_k / params_b
            generation = [by_name[n] for n in ("dense generation", "regeneration") if n in by_name]
            gen_round = sum(g["total_s"] for g in generation) / max(sum(g["count"] for g in generation), 1)
            ours = sum(r["total_s"] for r in rows)
            reference = REFERENCE_PASSES * scoring["mean_s"] + (1 + REFERENCE_REGENERATIONS) * gen_round
            estimate = run["estimate"]
            if estimate is not None and scoring["peak_gib"] is not None:
                lines += [
                    "",
                    f"Scoring memory: the prune estimated {estimate.peak_bytes / 2**30:.2f} GiB above the loaded model "
                    f"before any work ({estimate.describe()}); measured, the scoring phases peaked "
                    f"{scoring['peak_gib'] - run['loaded_bytes'] / 2**30:.2f} GiB above it (the process before "
                    f"loading plus the model's weights: {run['loaded_bytes'] / 2**30:.2f} GiB).",
                ]
            lines += [
                "",
                f"One scoring pass: {scoring['mean_s']:.1f} s for {per_pass_tokens:.0f} tokens (prompts + traces) = "
                f"**{per_k:.2f} s per 1k tokens**, {per_k_b:.2f} s per 1k tokens per billion parameters. One "
                f"generation round: {gen_round:.1f} s. This schedule: {ours:.0f} s; the reference schedule "
                f"({REFERENCE_PASSES} passes + {1 + REFERENCE_REGENERATIONS} generation rounds) from the same "
                f"measurements: {reference:.0f} s ({reference / ours:.1f}x).",
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    parser.add_argument("--generators", nargs="+", choices=list(GENERATORS), default=None)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--sparsity", type=float, default=0.4)
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4, help="examples per scoring backward pass")
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="RESPConfig.gradient_checkpointing (default: chosen by the prune's memory estimate)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    generators = args.generators or ["hf", *(["vllm"] if vllm_installed() else [])]
    if not peak_memory_supported(args.device):
        print("note: peak memory cannot be measured on this machine; the column stays empty", file=sys.stderr)
    command = (
        f"python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip()
    )
    runs = []
    # The block is rewritten after each generator, so a stopped run keeps the rows it finished.
    with tempfile.TemporaryDirectory(prefix="bench-prune-cost-model-") as folder:  # loaded as the CLI loads
        for generator in generators:
            runs.append(one_prune(args, generator, getattr(torch, dtype), args.device, Path(folder)))
            text = render(args, runs, args.device, dtype, command)
            print(text, flush=True)
            if not args.no_write:
                write_results(f"prune-cost-{'cuda' if args.device.startswith('cuda') else 'cpu'}", text)


if __name__ == "__main__":
    main()
