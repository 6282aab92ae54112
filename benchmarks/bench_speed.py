"""Speed and memory of physically pruned models against the dense model, measured side by side.

A random-weight model with Qwen3-0.6B's shape (or Qwen3-8B's, on a GPU) is pruned to several
fractions of its decoder-linear parameters in both export modes. For each pruned model, dense and
pruned runs are interleaved in the same process: prefill (batch 1 x 512 tokens), greedy decode
throughput (128 new tokens with KV cache), and memory (weights + KV cache). The ideal speedup is
weights read per decoded token, dense over pruned (all linear layers including lm_head, embedding
lookup excluded). Results go to benchmarks/RESULTS.md between this script's own markers.

    python benchmarks/bench_speed.py                      # Qwen3-0.6B shape, CPU, float32
    python benchmarks/bench_speed.py --shape qwen3-8b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Qwen3Config
from transformers.initialization import no_init_weights

from optimum_resp import prune_model, size_report
from optimum_resp.speed import compare_speed
from optimum_resp.testing_utils import QWEN3_0_6B_SHAPE, random_plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import write_results  # noqa: E402

SHAPES = {
    "qwen3-0.6b": QWEN3_0_6B_SHAPE,
    "qwen3-8b": {
        **QWEN3_0_6B_SHAPE,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
    },
    "tiny": {
        **QWEN3_0_6B_SHAPE,
        "vocab_size": 1024,
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
    },
}


def build_dense(shape: str, dtype: torch.dtype, device: str) -> torch.nn.Module:
    config = Qwen3Config(**SHAPES[shape])
    with no_init_weights(), torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=gen)
        for m in model.modules():
            if "RMSNorm" in type(m).__name__:
                m.weight.fill_(1.0)
    if config.tie_word_embeddings:  # Qwen3-0.6B reads one matrix for embeddings and lm_head
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.2, 0.4, 0.6])
    parser.add_argument("--exports", nargs="+", default=["uniform", "per_layer"])
    parser.add_argument(
        "--channel-multiples",
        type=int,
        nargs="+",
        default=[1],
        help="kept MLP widths rounded to these multiples (one row each; 1 = no rounding)",
    )
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--decode-prompt", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--section", default=None, help="RESULTS.md block name (default: speed-<shape>-<device>)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    device = args.device
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    if args.threads:
        torch.set_num_threads(args.threads)

    dense = build_dense(args.shape, dtype, device)
    rows = []
    for sparsity in args.sparsities:
        for export, multiple in ((e, k) for e in args.exports for k in args.channel_multiples):
            plan = random_plan(
                dense.config, sparsity, per_layer=export == "per_layer", seed=0, channel_multiple=multiple
            )
            pruned = prune_model(dense, plan, export=export)
            report = size_report(dense, pruned)
            m = compare_speed(
                dense, pruned, args.prefill_tokens, args.decode_tokens, args.decode_prompt, args.repeats
            )
            rows.append((report.sparsity, export, multiple, m))
            print(
                f"sparsity {report.sparsity:.3f} {export:9s} x{multiple} ideal {m.ideal_speedup:.2f}x  "
                f"prefill {m.prefill_speedup:.2f}x ({m.prefill_speedup / m.ideal_speedup:.2f} of ideal)  "
                f"decode {m.decode_speedup:.2f}x ({m.decode_speedup / m.ideal_speedup:.2f} of ideal)",
                flush=True,
            )
            del pruned
            gc.collect()

    cfg = dense.config
    device_name = (
        torch.cuda.get_device_name()
        if device == "cuda"
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    lines = [
        f"## Speed: random-weight {args.shape} shape, {device} ({device_name}), {str(dtype).replace('torch.', '')}",
        "",
        f"Command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:] if argv is None else argv)}`".rstrip(),
        "",
        f"Shape: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} query / "
        f"{cfg.num_key_value_heads} KV heads, head_dim {cfg.head_dim}, intermediate {cfg.intermediate_size}, "
        f"vocab {cfg.vocab_size}. Prefill: batch 1 x {args.prefill_tokens} tokens (logits of the last token). "
        f"Decode: {args.decode_tokens} greedy tokens with KV cache after a {args.decode_prompt}-token prompt. "
        f"Dense and pruned runs interleaved in one process, {args.repeats} repeats, medians; speedup = median of "
        "per-pair dense/pruned time ratios. Ideal = linear weights read per token (lm_head included), dense / "
        "pruned. Memory = weights + KV cache after decoding"
        + (" (CUDA: also allocator peak during decode)." if device == "cuda" else "."),
        "Pruned structures are chosen at random (speed does not depend on which): whole KV groups with their "
        "query heads, then MLP channels to meet each layer's parameter target; per_layer ramps layer targets "
        "from 0.5x to 1.5x the overall sparsity. MLP multiple: kept channel counts rounded to a multiple of it.",
        "",
        "| sparsity | export | MLP multiple | ideal | prefill speedup | of ideal | decode speedup | of ideal | dense decode tok/s | pruned decode tok/s | memory dense -> pruned (MiB) | KV cache dense -> pruned (MiB) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    mib = 2**20
    for sparsity, export, multiple, m in rows:
        ideal = m.ideal_speedup
        lines.append(
            f"| {sparsity:.1%} | {export} | {multiple} | {ideal:.2f}x | {m.prefill_speedup:.2f}x | {m.prefill_speedup / ideal:.2f} | "
            f"{m.decode_speedup:.2f}x | {m.decode_speedup / ideal:.2f} | {m.decode_dense_tokens_per_s:.1f} | "
            f"{m.decode_pruned_tokens_per_s:.1f} | {m.dense_memory_bytes / mib:,.0f} -> {m.pruned_memory_bytes / mib:,.0f} | "
            f"{m.dense_kv_bytes / mib:,.1f} -> {m.pruned_kv_bytes / mib:,.1f} |"
        )
    if device == "cuda":
        lines.append("")
        lines.append(
            "CUDA allocator peak during decode (MiB): "
            + "; ".join(
                f"{s:.0%} {e}: {m.dense_peak_bytes / mib:,.0f} -> {m.pruned_peak_bytes / mib:,.0f}"
                for s, e, _, m in rows
            )
        )
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_results(args.section or f"speed-{args.shape}-{device}", text)


if __name__ == "__main__":
    main()
