"""Peak memory of importance collection: RESP's per-structure hooks against a plain forward+backward, against a
backward that keeps all gradients, and against the estimate a prune checks before any work.

Each measurement runs in its own subprocess on the same random-weight model and the same calibration
examples, and reports the process's peak resident memory above what it held right after loading the
model (CPU), or the CUDA allocator's peak above the model's own bytes (GPU):
- `plain`: one forward+backward per batch with the prunable linears requiring grad and each gradient
  dropped the moment it is ready: what any backward costs, the floor for a gradient criterion;
- `hooks`: `TaylorScorer` (the Trainer run RESP uses): |W * g| accumulated per structure in
  post-accumulate-grad hooks, each gradient freed at once ("batch"), the same with gradient checkpointing
  ("batch-ckpt"), or a float32 sum per prunable weight ("all", the reference's estimator);
- `full`: every parameter requires grad and every gradient is kept and accumulated over the
  examples, as LLM-Pruner-style Taylor collection does.
Rows marked `-bf16` run the forward pass under bf16 autocast (`RESPConfig.bf16_autocast`); the others in the
weights' own dtype. The estimate column is `optimum_resp.memory.estimate_scoring_memory` for the same batch (what `prune` refuses
on before generating anything).

    python benchmarks/bench_memory.py                        # Qwen3-0.6B shape, CPU
    python benchmarks/bench_memory.py --shape qwen3-8b --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_speed import SHAPES, build_dense  # noqa: E402
from results_md import write_results  # noqa: E402


def worker(args) -> None:
    import psutil
    import torch

    from optimum_resp.importance import TaylorScorer
    from optimum_resp.importance.base import prunable_linears
    from optimum_resp.memory import estimate_scoring_memory

    torch.set_num_threads(args.threads)
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build_dense(args.shape, dtype, device)
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    examples = []
    for _ in range(args.examples):
        ids = torch.randint(0, vocab, (args.tokens,), generator=gen).tolist()
        prompt = args.tokens // 4
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    checkpointing = "-ckpt" in args.mode
    bf16 = "-bf16" in args.mode
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)
    estimate = None
    if args.mode.startswith(
        "hooks-batch"
    ):  # probed before the baseline is read: its own memory is not counted
        estimate = estimate_scoring_memory(
            model, args.batch_size, args.tokens, checkpointing, bf16
        ).peak_bytes
    proc = psutil.Process()
    base = proc.memory_info().rss
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    start = time.perf_counter()
    if args.mode.startswith("hooks"):
        TaylorScorer(
            abs_after=args.mode.split("-")[1],
            batch_size=args.batch_size,
            progress=False,
            gradient_checkpointing=checkpointing,
            bf16_autocast=bf16,
        ).score(model, examples)
    elif args.mode.startswith("plain"):  # the same backward, every gradient dropped as soon as it is ready
        prunable = {id(p) for lin in prunable_linears(model) for _, p in lin.params}
        for p in model.parameters():
            p.requires_grad_(id(p) in prunable)
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(lambda t: setattr(t, "grad", None))
        for i in range(0, len(examples), args.batch_size):
            batch = examples[i : i + args.batch_size]
            ids = torch.tensor([e["input_ids"] for e in batch], device=device)
            labels = torch.tensor([e["labels"] for e in batch], device=device)
            with autocast:
                loss = model(input_ids=ids, labels=labels, use_cache=False).loss
            loss.backward()
    else:  # every gradient kept, accumulated over the batches
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        for i in range(0, len(examples), args.batch_size):
            batch = examples[i : i + args.batch_size]
            ids = torch.tensor([e["input_ids"] for e in batch], device=device)
            labels = torch.tensor([e["labels"] for e in batch], device=device)
            model(input_ids=ids, labels=labels, use_cache=False).loss.backward()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - base_cuda if device == "cuda" else None
    print(
        "RESULT "
        + json.dumps(
            {
                "mode": args.mode,
                "seconds": seconds,
                "base_rss": base,
                "cuda_peak_above_model": peak,
                "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
                "estimate": estimate,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="hooks-batch")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--examples", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--no-bf16", dest="bf16", action="store_false", help="leave out the bf16-autocast rows"
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    modes = []
    for mode in ("plain", "hooks-batch", "hooks-batch-ckpt", "hooks-all", "full"):
        modes += (
            [mode, f"{mode}-bf16"]
            if args.bf16 and mode in ("plain", "hooks-batch", "hooks-batch-ckpt")
            else [mode]
        )
    for mode in modes:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--mode",
            mode,
            "--shape",
            args.shape,
            "--device",
            args.device,
            "--examples",
            str(args.examples),
            "--tokens",
            str(args.tokens),
            "--batch-size",
            str(args.batch_size),
            "--threads",
            str(args.threads),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            raise RuntimeError(f"{mode} failed:\n{output[-3000:]}")
        r = json.loads(next(x for x in output.splitlines() if x.startswith("RESULT "))[7:])
        r["peak_above_load"] = (
            r["cuda_peak_above_model"] if args.device == "cuda" else usage.ru_maxrss * 1024 - r["base_rss"]
        )
        rows.append(r)
        print(
            f"{mode:22s} peak above the loaded model {r['peak_above_load'] / 2**20:,.0f} MiB, {r['seconds']:.1f}s",
            flush=True,
        )
    mib = 2**20
    full = next(r for r in rows if r["mode"] == "full")
    plain = {r["mode"]: r for r in rows if r["mode"].startswith("plain")}
    lines = [
        f"## Importance-collection memory: random-weight {args.shape} shape, {args.device}",
        "",
        f"Command: `python benchmarks/bench_memory.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"{args.examples} calibration examples of {args.tokens} tokens (decode-only labels on the last 3/4), "
        f"batch {args.batch_size}. "
        f"Peak memory above what the process held right after loading the model "
        f"({'CUDA allocator peak' if args.device == 'cuda' else 'max RSS'}); the model's parameters take "
        f"{full['param_bytes'] / mib:,.0f} MiB. Each row is its own subprocess. Estimate: what a prune checks "
        "against free memory before any work (`optimum_resp.memory.estimate_scoring_memory`).",
        "",
        "| collection | peak above the loaded model (MiB) | vs a plain forward+backward (same precision) "
        "| vs keeping all gradients | estimate (MiB) | seconds | time vs fp32 plain |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    names = {
        "plain": "forward+backward, each gradient dropped when ready (the floor)",
        "plain-bf16": "forward+backward under bf16 autocast, each gradient dropped when ready",
        "hooks-batch": "RESP hooks, abs(W*g) per backward",
        "hooks-batch-bf16": "RESP hooks, abs(W*g) per backward, bf16 autocast",
        "hooks-batch-ckpt": "RESP hooks, with gradient checkpointing",
        "hooks-batch-ckpt-bf16": "RESP hooks, with gradient checkpointing, bf16 autocast",
        "hooks-all": "RESP hooks, float32 gradient sum per prunable weight (reference estimator)",
        "full": "forward+backward keeping every gradient",
    }
    for r in rows:
        estimate = "-" if r.get("estimate") is None else f"{r['estimate'] / mib:,.0f}"
        floor = plain["plain-bf16" if "-bf16" in r["mode"] else "plain"]
        lines.append(
            f"| {names[r['mode']]} | {r['peak_above_load'] / mib:,.0f} | "
            f"{r['peak_above_load'] / floor['peak_above_load']:.2f}x | "
            f"{r['peak_above_load'] / full['peak_above_load']:.2f}x | {estimate} | {r['seconds']:.1f} | "
            f"{r['seconds'] / plain['plain']['seconds']:.2f}x |"
        )
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_results(f"memory-{args.shape}-{args.device}", text)


if __name__ == "__main__":
    main()
