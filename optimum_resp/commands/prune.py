"""`optimum-resp prune`: RESP (or a baseline) on a model, with checkpoints that resume."""

from __future__ import annotations

import argparse
import logging

from .generation_args import add_generation_arguments, generation_overrides

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  optimum-resp prune Qwen/Qwen3-8B --sparsity 0.4 --calibration openai/gsm8k --output qwen3-8b-resp40
  optimum-resp prune ./my-model --sparsity 0.3 --calibration train.jsonl --output out --method wanda-sp
  optimum-resp prune ./my-model --config resp_config.json --calibration train.jsonl --output out

Running the same command again resumes after the last finished stage.
"""


def register(subparsers) -> None:
    from ..calibration import GENERATORS
    from ..configuration_resp import METHOD_PRESETS, RESPConfig
    from ..evaluation.tasks import TASKS
    from ..recovery import RECOVERY
    from ..runtimes import RUNTIMES, ExportConfig

    p = subparsers.add_parser(
        "prune",
        help="prune a model with RESP or a baseline",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="Hub model id or local folder")
    p.add_argument("--output", required=True, help="output folder (stage checkpoints, then the pruned model)")
    p.add_argument(
        "--calibration",
        required=True,
        help="calibration prompts: a Hub dataset id or a local .jsonl/.json/.parquet in the task's format",
    )
    p.add_argument("--task", choices=sorted(TASKS), default="gsm8k", help="format of the calibration data")
    p.add_argument("--split", default="train", help="split of the calibration data (default: train)")
    p.add_argument(
        "--skip-invalid-rows",
        action="store_true",
        help="skip calibration rows whose question is null, empty or not text (default: refuse the file)",
    )
    p.add_argument(
        "--sparsity", type=float, default=None, help="fraction of decoder-linear parameters to remove"
    )
    p.add_argument("--method", choices=list(METHOD_PRESETS), default="resp")
    p.add_argument("--export", choices=ExportConfig.choices("mode"), default=None)
    p.add_argument(
        "--runtime",
        action="append",
        default=None,
        metavar="NAME",
        help=f"a runtime the export must load in ({', '.join(RUNTIMES)}); repeat for several. A uniform Qwen2 "
        "for llama.cpp or vLLM then keeps every query head",
    )
    p.add_argument(
        "--recover",
        choices=list(RECOVERY),
        default=None,
        help="recovery after the last stage, on the dense model's traces: lora (hard labels, merged) or distill "
        "(KL to the dense model's top-k distributions, all parameters)",
    )
    p.add_argument(
        "--recovery-tokens",
        type=int,
        default=None,
        help="decode tokens recovery learns from per epoch (default: the dense calibration traces'); more, and the "
        "dense model also answers further training prompts before the first stage",
    )
    p.add_argument(
        "--config", default=None, help="a resp_config.json (file or folder); flags above override it"
    )
    p.add_argument("--num-prompts", type=int, default=None)
    p.add_argument(
        "--allow-unfinished-traces",
        action="store_true",
        default=None,
        help="prune even when none of the dense model's traces finishes (e.g. a random-weight model)",
    )
    p.add_argument(
        "--stages",
        type=int,
        default=None,
        help="number of progressive stages (default 8; each is a scoring pass; only the last is kept on disk)",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="sequences per scoring backward pass (default 4)"
    )
    p.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="scoring recomputes activations in the backward pass: far less memory, more time (default: on only "
        "when the plain scoring pass would not fit in memory)",
    )
    p.add_argument(
        "--bf16-autocast",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="scoring's forward pass under bf16 autocast (default: on for float32 weights on a device with bf16 "
        "matmuls)",
    )
    p.add_argument(
        "--channel-multiple", type=int, default=None, help="keep MLP widths a multiple of this (e.g. 64, 128)"
    )
    p.add_argument(
        "--generator",
        choices=sorted(GENERATORS),
        default="auto",
        help="calibration generation backend: auto (vLLM where installed and measured faster), hf, vllm",
    )
    p.add_argument("--push-to-hub", metavar="REPO", default=None, help="upload the result to this Hub repo")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.add_argument(
        "--base-model", default=None, help="Hub id of the base model, for the model card (local MODEL)"
    )
    p.add_argument("--dtype", default="auto", help="model dtype to load (auto, bfloat16, float32, ...)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add_generation_arguments(
        p,
        RESPConfig().calibration.generation,
        "of the calibration traces",
        batch_flag="--generation-batch-size",
    )
    p.set_defaults(resp_func=run)


def build_config(args: argparse.Namespace):
    """The RESPConfig the flags describe: --config first, then the method preset, then explicit flags."""
    from ..configuration_resp import METHOD_PRESETS, RESPConfig
    from ..recovery import RECOVERY
    from ..runtimes import export_target

    base = RESPConfig.from_pretrained(args.config) if args.config else RESPConfig()
    flags = {
        "target_sparsity": args.sparsity,
        "export": args.export,
        "num_calibration_prompts": args.num_prompts,
        "num_stages": args.stages,
        "batch_size": args.batch_size,
        "gradient_checkpointing": args.gradient_checkpointing,
        "bf16_autocast": args.bf16_autocast,
        "channel_multiple": args.channel_multiple,
        "recovery": args.recover,
        "recovery_tokens": args.recovery_tokens,
        "allow_unfinished_traces": args.allow_unfinished_traces,
        "runtimes": args.runtime,
    }
    values = {**METHOD_PRESETS[args.method][0], **{k: v for k, v in flags.items() if v is not None}}
    values["generation"] = generation_overrides(args)  # laid over the config's own decoding settings
    if (
        args.export is not None
    ):  # the allocation its export mode needs (uniform: the same sizes in every layer)
        values["allocation"] = export_target(args.export).allocation or base.export.allocation
    config = base.override(**values)
    if args.recovery_tokens is not None and config.recovery is None:
        raise ValueError(
            f"--recovery-tokens is the budget of a recovery: add --recover ({' or '.join(RECOVERY)})."
        )
    return config


def run(args: argparse.Namespace) -> int:
    from ..calibration import get_generator, prompts_from_task
    from ..loading import check_device, check_dtype, check_model_source, load_model_config
    from ..pruner import RESPPruner
    from ..run_folder import RunFolder

    # Every check that needs no model comes first, cheapest first: a typo is reported in a second, not after
    # minutes of loading an 8B model.
    config = build_config(args)  # flags and --config (a missing local file: at once, no Hub retries)
    device = check_device(args.device)  # --device cuda:3 on a CPU machine
    dtype = check_dtype(args.dtype)  # --dtype float13
    generator = get_generator(args.generator)  # --generator vllm without vLLM
    check_model_source(args.model)  # a local model path that does not exist
    output = RunFolder(args.output)
    output.check_can_start(None, source=args.model)  # not the model's folder, writable, empty or a run
    prompts = prompts_from_task(  # every calibration row checked
        args.task,
        args.calibration,
        split=args.split,
        # Recovery with a token budget also learns from the dense model's answers to further training prompts.
        limit=None
        if config.recovery is not None and config.recovery.tokens
        else config.calibration.num_prompts,
        seed=config.seed,
        skip_invalid_rows=args.skip_invalid_rows,
    )
    if args.push_to_hub:
        from ..hub import check_can_push, check_hub_reachable

        token = check_can_push(args.push_to_hub)  # no token, offline, a bad repo id
        check_hub_reachable(token)  # no network, or a token the Hub refuses
    # The model's config.json (a local folder: checked in itself and against its weights' headers), and the recipe
    # against it: a channel multiple or target this model cannot take, or an output folder holding a run of another
    # recipe (compared as fitted to the model: max_length to its positions, structures to its runtimes).
    config = RESPPruner.check_recipe(load_model_config(args.model), config, source=args.model, task=args.task)
    output.check_can_start(config, source=args.model)
    pruner = RESPPruner.from_pretrained(
        args.model, config=config, task=args.task, generator=generator, dtype=dtype
    )
    pruner.model.to(device)
    card = {"command": args.command_line, "base_model": args.base_model}
    with output.lock():  # held from the first stage to the saved model: no other prune writes in between
        result = pruner.prune(prompts, output_dir=output)
        if args.push_to_hub:
            url = pruner.push_to_hub(
                args.push_to_hub, save_directory=output.path, private=args.private or None, **card
            )
            print(f"Pushed to {args.push_to_hub}: {url}")
        else:
            pruner.save_pretrained(output.path, **card)
    print(
        f"Pruned {args.model} with {args.method}: sparsity {result.report.sparsity:.2%} "
        f"({result.report.dense_total_params:,} -> {result.report.pruned_total_params:,} parameters). "
        f"Saved to {output.path}."
    )
    return 0
