"""Pruned models in llama.cpp: dense vs uniform-export speed, through llama.cpp's own converter and runtime.

A random-weight model with Qwen3-0.6B's shape is pruned to 20/40/60% of its decoder-linear parameters
(random keep-sets: speed does not depend on which structures go) with the uniform export, the one
llama.cpp loads; dense and pruned are converted by llama.cpp's convert_hf_to_gguf.py (q8_0 by default,
the usual CPU choice) and loaded side by side in llama-cpp-python, and their measurements alternate
(dense, pruned, dense, pruned ...), so every ratio comes from one run. Measured per model:
- batch-1 decode tokens/s: N single-token steps after a 16-token prompt;
- prompt processing tokens/s: one P-token prompt.
Each speedup is shown beside the ideal (linear weights read per token, dense / pruned). Writes the
`llama-cpp-<outtype>` block of benchmarks/RESULTS.md.

    RESP_LLAMA_CPP_CONVERTER=/path/to/llama.cpp/convert_hf_to_gguf.py python benchmarks/bench_llama_cpp.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from optimum_resp import prune_model, size_report
from optimum_resp.speed import linear_weights
from optimum_resp.testbed import testbed_model_path
from optimum_resp.testing_utils import random_plan

sys.path.insert(0, str(Path(__file__).parent))
from bench_speed import SHAPES, build_dense  # noqa: E402
from results_md import write_results  # noqa: E402

CONVERT = Path(__file__).resolve().parents[1] / "tests" / "llama_cpp_convert.py"


def convert(model, tokenizer, folder: Path, converter: str, outtype: str) -> Path:
    """Save `model` (with a BPE tokenizer: the random shape has no tokenizer of its own) and convert it."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = folder / f"model-{outtype}.gguf"
    cmd = [sys.executable, str(CONVERT), converter, str(folder), "--outfile", str(out), "--outtype", outtype]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    for f in folder.glob("*.safetensors"):
        f.unlink()  # only the GGUF is needed from here on
    return out


def load(gguf: Path, threads: int, n_ctx: int):
    import llama_cpp

    return llama_cpp.Llama(str(gguf), n_ctx=n_ctx, n_threads=threads, n_batch=512, verbose=False, seed=0)


def measure(llm, args, gen: torch.Generator) -> tuple[float, float]:
    """(batch-1 decode tokens/s, prompt tokens/s) of one model, on fresh random token ids."""
    ids = torch.randint(10, 700, (16 + args.decode_tokens + args.prompt_tokens,), generator=gen).tolist()
    llm.reset()
    llm.eval(ids[:16])
    start = time.perf_counter()
    for token in ids[16 : 16 + args.decode_tokens]:
        llm.eval([token])
    decode = args.decode_tokens / (time.perf_counter() - start)
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids[-args.prompt_tokens :])
    prompt = args.prompt_tokens / (time.perf_counter() - start)
    return decode, prompt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--outtype", choices=["q8_0", "f16", "f32"], default="q8_0")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.2, 0.4, 0.6])
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--converter", default=os.environ.get("RESP_LLAMA_CPP_CONVERTER"))
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    if not args.converter or not Path(args.converter).is_file():
        parser.error(
            "pass --converter (or set RESP_LLAMA_CPP_CONVERTER) to llama.cpp's convert_hf_to_gguf.py"
        )
    import llama_cpp

    tokenizer = AutoTokenizer.from_pretrained(testbed_model_path())
    dense = build_dense(args.shape, torch.float32, "cpu")
    n_ctx = 16 + args.decode_tokens + args.prompt_tokens + 16
    gen = torch.Generator().manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-llama-cpp-") as tmp:
        dense_gguf = convert(dense, tokenizer, Path(tmp, "dense"), args.converter, args.outtype)
        dense_llm = load(dense_gguf, args.threads, n_ctx)
        for sparsity in args.sparsities:
            plan = random_plan(dense.config, sparsity, per_layer=False, seed=0)
            pruned = prune_model(dense, plan, export="uniform")
            report = size_report(dense, pruned)
            ideal = linear_weights(dense) / linear_weights(pruned)
            gguf = convert(pruned, tokenizer, Path(tmp, f"uniform-{sparsity}"), args.converter, args.outtype)
            del pruned
            pruned_llm = load(gguf, args.threads, n_ctx)
            measure(dense_llm, args, gen), measure(pruned_llm, args, gen)  # warm-up (page cache, threads)
            dense_m, pruned_m = [], []
            for _ in range(args.repeats):
                dense_m.append(measure(dense_llm, args, gen))
                pruned_m.append(measure(pruned_llm, args, gen))
            pruned_llm.close()
            row = dict(
                sparsity=report.sparsity,
                ideal=ideal,
                decode=statistics.median(p[0] / d[0] for d, p in zip(dense_m, pruned_m)),
                prompt=statistics.median(p[1] / d[1] for d, p in zip(dense_m, pruned_m)),
                dense_decode=statistics.median(d[0] for d in dense_m),
                pruned_decode=statistics.median(p[0] for p in pruned_m),
                dense_prompt=statistics.median(d[1] for d in dense_m),
                pruned_prompt=statistics.median(p[1] for p in pruned_m),
                file_ratio=gguf.stat().st_size / dense_gguf.stat().st_size,
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
        dense_llm.close()

    cfg = dense.config
    device = f"{platform.processor() or 'CPU'}, {args.threads} threads"
    command = (
        f"python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip()
    )
    lines = [
        f"## llama.cpp: random-weight {args.shape} shape, uniform export, {args.outtype} GGUF, cpu ({device}), "
        f"llama-cpp-python {llama_cpp.__version__}",
        "",
        f"Command: `RESP_LLAMA_CPP_CONVERTER=... {command}`",
        "",
        f"Shape: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} query / "
        f"{cfg.num_key_value_heads} KV heads, intermediate {cfg.intermediate_size}. Converted by llama.cpp's "
        f"convert_hf_to_gguf.py to {args.outtype}; dense and pruned loaded side by side, measurements alternating after "
        f"one warm-up each, {args.repeats} repeats, speedup = median of per-pair ratios. Batch-1 decode: {args.decode_tokens} "
        f"single-token steps after a 16-token prompt. Prompt: one {args.prompt_tokens}-token prompt. Ideal = "
        "linear weights read per token, dense / pruned (the embedding and LM head, unpruned, are not in it). Random "
        "uniform keep-sets (whole KV groups with their query heads, then MLP channels).",
        "",
        "| sparsity | ideal | batch-1 decode speedup | of ideal | prompt speedup | decode tok/s dense -> pruned | "
        "prompt tok/s dense -> pruned | GGUF size (of dense) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sparsity']:.1%} | {r['ideal']:.2f}x | {r['decode']:.2f}x | {r['decode'] / r['ideal']:.2f} | "
            f"{r['prompt']:.2f}x | {r['dense_decode']:.1f} -> {r['pruned_decode']:.1f} | "
            f"{r['dense_prompt']:.1f} -> {r['pruned_prompt']:.1f} | {r['file_ratio']:.2f} |"
        )
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_results(f"llama-cpp-{args.outtype}", text)


if __name__ == "__main__":
    main()
