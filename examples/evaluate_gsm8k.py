"""Evaluate a (pruned) model on GSM8K with the project's harness: chat template, thinking, deterministic extraction.

    python examples/evaluate_gsm8k.py qwen3-8b-resp40 --data openai/gsm8k --limit 500
    python examples/evaluate_gsm8k.py tiny-reasoner-resp --data optimum_resp/testbed/data/gsm8k_test.jsonl

Per-sample results (prompt, completion, extracted answer, gold, correct) go to OUTPUT/samples.jsonl and
the summary (accuracy with a 95% interval, mean generated tokens, truncation, tokens/s) to summary.json.
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import optimum_resp  # noqa: F401 - registers the per_layer model classes with the Auto classes
from optimum_resp.evaluation import EvalConfig, evaluate_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--data", default="openai/gsm8k")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument(
        "--sample", action="store_true", help="temperature 0.6 / top_p 0.95 / top_k 20 instead of greedy"
    )
    parser.add_argument("--max-new-tokens", type=int, default=2048)
    parser.add_argument("--output", default="eval_gsm8k")
    args = parser.parse_args()

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto").eval()
    if torch.cuda.is_available():
        model.cuda()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    config = EvalConfig(
        task="gsm8k",
        data=args.data,
        limit=args.limit,
        generation={"do_sample": args.sample, "max_new_tokens": args.max_new_tokens, "batch_size": 32},
    )
    result = evaluate_model(model, tokenizer, config, output_dir=args.output)
    print(json.dumps({k: v for k, v in result.summary.items() if k != "config"}, indent=2))


if __name__ == "__main__":
    main()
