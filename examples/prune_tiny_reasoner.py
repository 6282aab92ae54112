"""Prune the shipped tiny reasoning model with RESP on CPU (a few minutes), then compare with the dense model.

    python examples/prune_tiny_reasoner.py --sparsity 0.4 --output tiny-reasoner-resp40

Every step is the public Python API: `RESPConfig`, `RESPPruner`, `evaluate_model`.
"""

from __future__ import annotations

import argparse
import logging

from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_resp import RESPConfig, RESPPruner
from optimum_resp.calibration import prompts_from_task
from optimum_resp.evaluation import EvalConfig, evaluate_model
from optimum_resp.testbed import testbed_data_path, testbed_model_path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sparsity", type=float, default=0.4)
    parser.add_argument("--prompts", type=int, default=128, help="calibration prompts (train split)")
    parser.add_argument("--eval-limit", type=int, default=200, help="problems to evaluate")
    parser.add_argument(
        "--split",
        default="held_out_frames",
        help="evaluation split: test (training frames), held_out_frames (frames never trained on) or hard",
    )
    parser.add_argument("--output", default="tiny-reasoner-resp")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    evaluation = EvalConfig(  # an unknown split fails here, before the prune
        task="gsm8k",
        data=str(testbed_data_path("gsm8k", args.split)),
        limit=args.eval_limit,
        generation={"max_new_tokens": 384, "batch_size": 64},
    )
    path = testbed_model_path()
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = RESPConfig(
        target_sparsity=args.sparsity,
        num_calibration_prompts=args.prompts,
        num_stages=4,
        # The tiny model's traces are short; Qwen3 needs the default 2048 new tokens.
        generation={"max_new_tokens": 384, "batch_size": 64},
        batch_size=8,
    )
    prompts = prompts_from_task("gsm8k", testbed_data_path("gsm8k", "train"), limit=args.prompts, seed=0)
    pruner = RESPPruner(model, tokenizer, config, task="gsm8k")
    result = pruner.prune(prompts, output_dir=args.output)
    pruner.save_pretrained(args.output)

    dense = evaluate_model(model, tokenizer, evaluation, show_progress=False).summary
    pruned = evaluate_model(result.model, tokenizer, evaluation, show_progress=False).summary
    print(
        f"sparsity {result.report.sparsity:.1%}: parameters {result.report.dense_total_params:,} -> "
        f"{result.report.pruned_total_params:,}"
    )
    print(
        f"{args.split} accuracy: dense {dense['accuracy']:.3f}, pruned {pruned['accuracy']:.3f} (n={pruned['n']})"
    )


if __name__ == "__main__":
    main()
