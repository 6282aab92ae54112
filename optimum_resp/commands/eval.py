"""`optimum-resp eval`: accuracy of a (pruned or dense) model on GSM8K or MathQA."""

from __future__ import annotations

import argparse
import json

from ..generation import GenerationSettings
from .generation_args import add_generation_arguments, generation_overrides

EXAMPLES = """examples:
  optimum-resp eval ./qwen3-8b-resp40 --task gsm8k --data openai/gsm8k --limit 200
  optimum-resp eval ./pruned --task mathqa --data mathqa_test.jsonl --output eval_out
"""


def register(subparsers) -> None:
    from ..evaluation.tasks import TASKS
    from ..generators import GENERATORS

    p = subparsers.add_parser(
        "eval",
        help="evaluate a model on GSM8K or MathQA",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="Hub model id or local folder (pruned per_layer models load too)")
    p.add_argument("--task", choices=sorted(TASKS), default="gsm8k")
    p.add_argument(
        "--data",
        default=None,
        help="Hub dataset id or local .jsonl/.json/.parquet (default: the task's Hub id)",
    )
    p.add_argument("--split", default="test")
    p.add_argument(
        "--skip-invalid-rows",
        action="store_true",
        help="skip rows whose question is null, empty or not text (default: refuse the data)",
    )
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="seed of sampled decoding")
    p.add_argument("--output", default=None, help="folder for samples.jsonl and summary.json")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--engine",
        choices=sorted(GENERATORS),
        default="auto",
        help="generation backend: hf (transformers), vllm, or auto (vLLM where installed and faster; default). "
        "Greedy answers are the same tokens through either.",
    )
    add_generation_arguments(p, GenerationSettings(), "greedy unless --do-sample", batch_flag="--batch-size")
    p.set_defaults(resp_func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import EvalConfig, evaluate_model, load_eval_rows
    from ..files import check_writable
    from ..generators import get_generator
    from ..loading import check_device, check_dtype, check_model_source, load_model, load_tokenizer

    config = EvalConfig(
        task=args.task,
        data=args.data,
        split=args.split,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        generation=generation_overrides(args),
        seed=args.seed,
        skip_invalid_rows=args.skip_invalid_rows,
    )
    # Every check that needs no model first: a typo is reported before minutes of loading.
    check_model_source(args.model)
    if args.output is not None:
        check_writable(args.output)  # an unwritable --output fails now, not after the whole evaluation
    device = check_device(args.device)
    dtype = check_dtype(args.dtype)
    generator = get_generator(args.engine)  # --engine vllm without vLLM: refused before the model loads
    rows = load_eval_rows(config)  # every row checked
    # On the device it runs on (--dtype auto: a bf16 checkpoint loads in float32 on a CPU without bf16 matmuls).
    placement = {} if device.type == "cpu" else {"device_map": str(device)}
    model = load_model(args.model, dtype=dtype, **placement).eval().to(device)
    tokenizer = load_tokenizer(args.model)
    result = evaluate_model(model, tokenizer, config, output_dir=args.output, generator=generator, rows=rows)
    s = result.summary
    print(json.dumps({k: v for k, v in s.items() if k != "config"}, indent=2))
    print(
        f"{args.task} accuracy {s['accuracy']:.3f} (95% CI {s['ci_low']:.3f}-{s['ci_high']:.3f}, n={s['n']})"
    )
    return 0
