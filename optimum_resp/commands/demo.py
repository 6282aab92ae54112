"""`optimum-resp demo`: prune a random-weight Qwen3 in both export modes; sizes, speed, reload check."""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import AutoModelForCausalLM, Qwen3Config

from ..accounting import size_report
from ..speed import compare_speed
from ..surgery import prune_model
from ..testing_utils import random_plan

DEMO_SHAPE = dict(
    vocab_size=8192,
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="prune a random-weight Qwen3 (uniform and per_layer) and compare size and speed",
        description=__doc__,
    )
    p.add_argument(
        "--sparsity", type=float, default=0.4, help="fraction of decoder-linear parameters to remove"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", default=None, help="also save the per_layer model here")
    p.set_defaults(resp_func=run)


def run(args: argparse.Namespace) -> int:
    if not 0.0 < args.sparsity < 1.0:
        raise ValueError(f"--sparsity must be in (0, 1); got {args.sparsity}.")
    torch.manual_seed(0)
    dense = AutoModelForCausalLM.from_config(Qwen3Config(**DEMO_SHAPE)).eval()
    print(f"Dense random-weight Qwen3: {dense.num_parameters():,} parameters")
    for export in ("uniform", "per_layer"):
        plan = random_plan(dense.config, args.sparsity, per_layer=export == "per_layer")
        pruned = prune_model(dense, plan, export=export)
        report = size_report(dense, pruned)
        print(f"\n=== export={export}: {type(pruned).__name__} ===")
        print(report.format_table())
        speed = compare_speed(dense, pruned, prefill_tokens=256, decode_tokens=32, repeats=args.repeats)
        print(
            f"Speed (dense vs pruned, interleaved, median of {args.repeats}): prefill {speed.prefill_speedup:.2f}x, "
            f"decode {speed.decode_speedup:.2f}x ({speed.decode_dense_tokens_per_s:.0f} -> "
            f"{speed.decode_pruned_tokens_per_s:.0f} tokens/s); ideal {speed.ideal_speedup:.2f}x"
        )
        with tempfile.TemporaryDirectory() as tmp:
            pruned.save_pretrained(args.output if (args.output and export == "per_layer") else tmp)
            reloaded = AutoModelForCausalLM.from_pretrained(
                args.output if (args.output and export == "per_layer") else tmp
            )
            ids = torch.randint(0, DEMO_SHAPE["vocab_size"], (1, 16))
            with torch.no_grad():
                same = torch.equal(reloaded(ids).logits, pruned(ids).logits)
            print(f"save_pretrained -> from_pretrained: {type(reloaded).__name__}, identical logits: {same}")
            if not same:
                return 1
    return 0
