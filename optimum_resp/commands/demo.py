"""`optimum-resp demo`: RESP on the shipped tiny reasoning model: dense vs pruned accuracy, size and speed.

With `--random`, it instead prunes a random-weight Qwen3 in both export modes (sizes, speed, reload).
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

from ..accounting import size_report
from ..configuration_resp import RESPConfig
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
        help="prune the shipped tiny reasoner with RESP: dense vs pruned accuracy, size, speed",
        description=__doc__,
    )
    p.add_argument(
        "--sparsity", type=float, default=0.4, help="fraction of decoder-linear parameters to remove"
    )
    p.add_argument("--prompts", type=int, default=64, help="calibration prompts from the testbed train split")
    p.add_argument(
        "--eval-limit",
        type=int,
        default=100,
        help="problems evaluated per split (test and held-out frames), dense and pruned",
    )
    p.add_argument(
        "--stages", type=int, default=RESPConfig.num_stages, help="progressive stages (default: RESPConfig's)"
    )
    p.add_argument("--repeats", type=int, default=3, help="speed comparison repeats")
    p.add_argument("--output", default=None, help="also save the pruned model (and its card) here")
    p.add_argument("--random", action="store_true", help="surgery demo on a random-weight Qwen3 instead")
    p.set_defaults(resp_func=run)


def run(args: argparse.Namespace) -> int:
    if not 0.0 < args.sparsity < 1.0:
        raise ValueError(f"--sparsity must be in (0, 1); got {args.sparsity}.")
    return run_random(args) if args.random else run_testbed(args)


def run_testbed(args: argparse.Namespace) -> int:
    from ..calibration import prompts_from_task
    from ..evaluation import EvalConfig, evaluate_model
    from ..pruner import RESPPruner
    from ..testbed import testbed_data_path, testbed_model_path

    path = testbed_model_path()
    if args.output:  # refused now, not after the prune: never over another model, never into the testbed
        from ..run_folder import RunFolder

        RunFolder(args.output).check_can_save(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    # problems held out of training in its own frames (`test`) and in frames it never saw (`held_out_frames`)
    splits = ["test", "held_out_frames"]
    evals = {
        split: EvalConfig(
            task="gsm8k",
            data=str(testbed_data_path("gsm8k", split)),
            split=split,
            limit=args.eval_limit,
            generation={"max_new_tokens": 384, "batch_size": 64},
        )
        for split in splits
    }
    print(
        f"Shipped tiny reasoner ({model.num_parameters():,} parameters): evaluating {args.eval_limit} problems "
        f"of each of {', '.join(splits)}, greedy ...",
        flush=True,
    )
    dense = {
        split: evaluate_model(model, tokenizer, cfg, show_progress=False).summary
        for split, cfg in evals.items()
    }

    config = RESPConfig(
        target_sparsity=args.sparsity,
        num_stages=args.stages,
        num_calibration_prompts=args.prompts,
        generation={"max_new_tokens": 384, "batch_size": 64},
        batch_size=8,
        max_length=1024,  # the shipped reasoner's positions
    )
    print(
        f"RESP to {args.sparsity:.0%} sparsity: {args.prompts} calibration prompts (train split), "
        f"{config.num_stages} stages, regeneration at {config.regeneration_milestones} ...",
        flush=True,
    )
    prompts = prompts_from_task("gsm8k", testbed_data_path("gsm8k", "train"), limit=args.prompts, seed=0)
    pruner = RESPPruner(model, tokenizer, config, task="gsm8k", generator="hf")
    result = pruner.prune(prompts)
    pruned = {
        split: evaluate_model(result.model, tokenizer, cfg, show_progress=False).summary
        for split, cfg in evals.items()
    }
    speed = compare_speed(model, result.model, prefill_tokens=256, decode_tokens=64, repeats=args.repeats)

    report = result.report
    print()
    print(report.size.format_table())
    print()
    for s in result.stages:
        loss = "n/a" if s.calibration_loss is None else f"{s.calibration_loss:.3f}"
        print(
            f"stage {s.stage}: sparsity {s.sparsity:.3f}, calibration loss {loss}"
            f"{', traces regenerated' if s.regenerated else ''} ({s.seconds:.0f}s)"
        )
    print()
    print("|  | dense | RESP-pruned |")
    print("|---|---:|---:|")
    for split in splits:
        d, r = dense[split], pruned[split]
        print(
            f"| {split} accuracy (n={d['n']}) | {d['accuracy']:.3f} [{d['ci_low']:.2f}, {d['ci_high']:.2f}] | "
            f"{r['accuracy']:.3f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] |"
        )
    print(f"| parameters | {report.dense_total_params:,} | {report.pruned_total_params:,} |")
    print(f"| decoder-linear sparsity | 0 | {report.sparsity:.1%} |")
    print(
        f"| mean trace tokens ({splits[0]}) | {dense[splits[0]]['mean_generated_tokens']:.0f} | "
        f"{pruned[splits[0]]['mean_generated_tokens']:.0f} |"
    )
    print(
        f"| decode tokens/s (batch 1) | {speed.decode_dense_tokens_per_s:.0f} | {speed.decode_pruned_tokens_per_s:.0f} |"
    )
    print(
        f"\nSpeedup (interleaved, median of {args.repeats}): prefill {speed.prefill_speedup:.2f}x, decode "
        f"{speed.decode_speedup:.2f}x; ideal (weights read per token) {speed.ideal_speedup:.2f}x. A model this "
        "small is dominated by per-layer overhead on CPU; see benchmarks/RESULTS.md for Qwen3-0.6B's shape."
    )
    if args.output:
        pruner.save_pretrained(
            args.output, eval_results=list(pruned.values()), command=getattr(args, "command_line", None)
        )
        print(f"Saved to {args.output}")
    return 0


def run_random(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    dense = AutoModelForCausalLM.from_config(Qwen3Config(**DEMO_SHAPE)).eval()
    print(f"Dense random-weight Qwen3: {dense.num_parameters():,} parameters")
    for export in ("uniform", "per_layer"):
        plan = random_plan(dense.config, args.sparsity, per_layer=export == "per_layer")
        pruned = prune_model(dense, plan, export=export)
        print(f"\n=== export={export}: {type(pruned).__name__} ===")
        print(size_report(dense, pruned).format_table())
        speed = compare_speed(dense, pruned, prefill_tokens=256, decode_tokens=32, repeats=args.repeats)
        print(
            f"Speed (dense vs pruned, interleaved, median of {args.repeats}): prefill {speed.prefill_speedup:.2f}x, "
            f"decode {speed.decode_speedup:.2f}x ({speed.decode_dense_tokens_per_s:.0f} -> "
            f"{speed.decode_pruned_tokens_per_s:.0f} tokens/s); ideal {speed.ideal_speedup:.2f}x"
        )
        with tempfile.TemporaryDirectory() as tmp:
            pruned.save_pretrained(tmp)
            reloaded = AutoModelForCausalLM.from_pretrained(tmp)
            ids = torch.randint(0, DEMO_SHAPE["vocab_size"], (1, 16))
            with torch.no_grad():
                same = torch.equal(reloaded(ids).logits, pruned(ids).logits)
            print(f"save_pretrained -> from_pretrained: {type(reloaded).__name__}, identical logits: {same}")
            if not same:
                return 1
    return 0
