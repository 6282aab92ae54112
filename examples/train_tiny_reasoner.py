"""Train the testbed's tiny Qwen3 reasoner on synthetic multi-step arithmetic word problems (CPU friendly).

It trains on the generator's training family (`optimum_resp.testbed.compositional`: many sentence frames per
operation, distractors, made-up names) and evaluates greedily on its ``test`` and ``held_out_frames`` splits. The
shipped checkpoint came from two chained runs on a 2-core CPU (85-100 minutes each; its model card and
``training_info.json`` record both)::

    python examples/train_tiny_reasoner.py --output-dir /tmp/v2run/out --time-budget-min 100 --seed 0 --threads 2 \
        --num-train 200000 --batch-size 32 --lr 2e-3 --mathqa-frac 0.2 --eval-n 200 --eval-batch-size 100 \
        --save-every-min 10
    python examples/train_tiny_reasoner.py --init-from /tmp/v2run/out --output-dir /tmp/v2c/out --num-train 120000 \
        --time-budget-min 85 --threads 2 --batch-size 32 --lr 1e-3 --mathqa-frac 0.2 --eval-n 200 \
        --eval-batch-size 100 --save-every-min 10

On a CUDA GPU the script trains there (bf16 autocast, fp32 weights); without one, on the CPU. A GPU moves a few
hundred thousand tokens/s (an H200 trained an earlier testbed in 5.5 minutes); a 2-core CPU 1.2k-2.9k.
An output folder that already holds a model is refused unless ``--overwrite`` is given (or it is the
``--init-from`` checkpoint being continued).

Quick smoke run (used by the tests)::

    python examples/train_tiny_reasoner.py --output-dir /tmp/tr_smoke --size tiny --max-steps 3 --num-train 64 --eval-n 4
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import re
import shlex
import sys
import time
from pathlib import Path

import psutil
import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from optimum_resp.memory import release_heap
from optimum_resp.testbed import DATA_SIZES
from optimum_resp.testbed.compositional import MAX_VALUE, generate_splits
from optimum_resp.testbed.problems import Problem
from optimum_resp.testbed.tokenizer import IM_END, build_testbed_tokenizer

logger = logging.getLogger("train_tiny_reasoner")

SIZES: dict[str, dict[str, int]] = {
    # hidden, layers, q heads, kv heads, head_dim, intermediate
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
    ),
    "small": dict(
        hidden_size=256,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=768,
    ),
    "base": dict(
        hidden_size=256,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=1024,
    ),
}

BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output-dir", required=True, help="where the final checkpoint is written")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a model already in --output-dir instead of refusing"
    )
    p.add_argument("--size", choices=sorted(SIZES), default="base")
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--intermediate-size", type=int, default=None)
    p.add_argument("--num-layers", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--init-from",
        default=None,
        help="start from this checkpoint (model + tokenizer) instead of a fresh model and tokenizer",
    )
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (schedule by steps)")
    p.add_argument(
        "--time-budget-min",
        type=float,
        default=40.0,
        help="wall-clock training budget; the LR schedule follows elapsed time (ignored with --max-steps)",
    )
    p.add_argument("--num-train", type=int, default=80000, help="generated training problems")
    p.add_argument(
        "--train-offset",
        type=int,
        default=0,
        help="skip this many generated training problems (fresh data when continuing a run)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.05)
    p.add_argument("--warmup-frac", type=float, default=0.04)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument(
        "--plain-frac",
        type=float,
        default=0.1,
        help="fraction of prompts that are the bare question (the rest use the harness's GSM8K text)",
    )
    p.add_argument(
        "--mathqa-frac",
        type=float,
        default=0.15,
        help="fraction of multiple-choice examples in the harness's MathQA prompt format",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="bf16 autocast (fp32 weights); auto = on where the device has bf16 matmuls (CUDA, or a CPU with "
        "AVX512-BF16/AMX: 2.2x the fp32 matmul throughput measured on a 2-core EPYC)",
    )
    p.add_argument(
        "--eval-n",
        type=int,
        default=500,
        help="problems of each of test and held_out_frames for the final greedy eval",
    )
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=320)
    p.add_argument(
        "--save-every-min", type=float, default=8.0, help="periodic checkpoint into <output-dir>/latest"
    )
    p.add_argument("--tokenizer-problems", type=int, default=4000)
    return p.parse_args(argv)


def prompt_text(tokenizer: PreTrainedTokenizerBase, user: str) -> str:
    """Render the chat prompt (thinking mode) for one user message."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], add_generation_prompt=True, enable_thinking=True, tokenize=False
    )


def build_examples(
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    seed: int,
    plain_frac: float,
    mathqa_frac: float,
) -> Dataset:
    """Tokenize chat-formatted (prompt, solution) pairs; prompt tokens get label -100."""
    rng = random.Random(seed + 17)
    prompts, completions = [], []
    for p in problems:
        r = rng.random()
        if r < mathqa_frac:
            user, sol = p.mathqa_prompt(), p.mathqa_solution()
        elif r < mathqa_frac + plain_frac:
            user, sol = p.question, p.solution
        else:
            user, sol = p.gsm8k_prompt(), p.solution
        prompts.append(prompt_text(tokenizer, user))
        completions.append(sol + IM_END)
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    input_ids = [a + b for a, b in zip(p_ids, c_ids, strict=True)]
    labels = [[-100] * len(a) + b for a, b in zip(p_ids, c_ids, strict=True)]
    return Dataset.from_dict(
        {"input_ids": input_ids, "labels": labels, "length": [len(x) for x in input_ids]}
    )


class PadCollator:
    """Right-pad a batch of variable-length examples (labels padded with -100)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), n), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = torch.tensor(b["input_ids"])
            labels[i, :k] = torch.tensor(b["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class TimeBudget(TrainerCallback):
    """Stop at the time budget, log throughput and save a periodic checkpoint."""

    def __init__(self, budget_s: float | None, save_every_s: float, out_dir: Path, tokenizer) -> None:
        self.budget_s, self.save_every_s, self.out_dir, self.tokenizer = (
            budget_s,
            save_every_s,
            out_dir,
            tokenizer,
        )
        self.start = time.monotonic()
        self.last_save = self.start
        self.tokens = 0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        now = time.monotonic()
        if self.budget_s is not None and now - self.start >= self.budget_s:
            logger.info("time budget reached after %d steps", state.global_step)
            control.should_training_stop = True
        if self.save_every_s > 0 and now - self.last_save >= self.save_every_s and model is not None:
            self.last_save = now
            latest = self.out_dir / "latest"
            model.save_pretrained(latest)
            self.tokenizer.save_pretrained(latest)
            (latest / "step.txt").write_text(f"{state.global_step}\n")
            logger.info("saved periodic checkpoint at step %d to %s", state.global_step, latest)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Under CPU bf16 autocast every new batch length leaves freed blocks glibc keeps (2.0 -> 4.8 GiB in 250
        # steps of batch 16, flat in float32; a 200k-problem run reached the OOM killer at 18.6 GB): hand them back.
        release_heap()
        rss = psutil.Process().memory_info().rss / 2**30
        logger.info("step %d: resident memory %.2f GiB", state.global_step, rss)


def make_lr_lambda(
    max_steps: int | None, budget_s: float | None, warmup_frac: float, min_ratio: float, clock
):
    """Warmup + cosine schedule over steps, or over elapsed wall-clock time when ``max_steps`` is None."""
    start = clock()

    def frac(step: int) -> float:
        if max_steps is not None:
            return step / max(1, max_steps)
        return (clock() - start) / budget_s

    def lr_lambda(step: int) -> float:
        f = min(1.0, frac(step))
        if f < warmup_frac:
            return max(f / warmup_frac, 0.01)
        t = (f - warmup_frac) / max(1e-8, 1 - warmup_frac)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return lr_lambda


def extract_boxed(text: str) -> str | None:
    """Return the content of the last ``\\boxed{...}`` after ``</think>`` (or anywhere), else None."""
    tail = text.split("</think>")[-1]
    m = BOXED_RE.findall(tail) or BOXED_RE.findall(text)
    return m[-1].strip() if m else None


@torch.no_grad()
def greedy_accuracy(
    model,
    tokenizer,
    problems: list[Problem],
    batch_size: int = 64,
    max_new_tokens: int = 320,
    mathqa: bool = False,
) -> dict:
    """Greedy-decode ``problems`` in left-padded batches; return accuracy and mean generated tokens."""
    model.eval()
    tokenizer.padding_side = "left"
    correct, gen_tokens, truncated = 0, 0, 0
    eos = tokenizer.convert_tokens_to_ids(IM_END)
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        users = [p.mathqa_prompt() if mathqa else p.gsm8k_prompt() for p in chunk]
        enc = tokenizer(
            [prompt_text(tokenizer, u) for u in users],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(model.device)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = out[:, enc["input_ids"].shape[1] :]
        for p, row in zip(chunk, new, strict=True):
            ids = row.tolist()
            n = ids.index(eos) + 1 if eos in ids else len(ids)
            truncated += eos not in ids
            gen_tokens += n
            pred = extract_boxed(tokenizer.decode(ids[:n], skip_special_tokens=True))
            correct += pred == (p.correct if mathqa else str(p.answer))
    n = max(1, len(problems))
    return {
        "n": len(problems),
        "accuracy": correct / n,
        "mean_generated_tokens": gen_tokens / n,
        "truncated_fraction": truncated / n,
    }


def use_bf16(choice: str, cuda: bool) -> bool:
    """Whether to train under bf16 autocast: asked for, or (auto) the device has fast bf16 matmuls."""
    supported = (
        torch.cuda.is_bf16_supported()
        if cuda
        else torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    )
    if choice == "on" and not supported:
        raise SystemExit("error: --bf16 on, but this device has no bf16 matmuls; use --bf16 auto or off.")
    return choice == "on" or (choice == "auto" and supported)


def previous_runs(init_from: str | None) -> list[dict]:
    """Training records of the checkpoint a run starts from, oldest first (empty for a run from scratch)."""
    path = Path(init_from) / "training_info.json" if init_from else None
    if path is None or not path.exists():
        return []
    info = json.loads(path.read_text())
    return info.pop("previous_runs", []) + [info]


def check_output_dir(out_dir: Path, init_from: str | None, overwrite: bool) -> None:
    """Refuse an output folder that holds a model other than the one being continued, before any work."""
    held = [
        name
        for name in ("config.json", "model.safetensors", "training_info.json")
        if (out_dir / name).exists()
    ]
    continuing = init_from is not None and Path(init_from).resolve() == out_dir.resolve()
    if held and not (overwrite or continuing):
        raise SystemExit(
            f"error: {out_dir} already holds a model ({', '.join(held)}); training would overwrite it. Choose another "
            "--output-dir, continue that model with --init-from pointing at it, or pass --overwrite."
        )


def make_splits(args: argparse.Namespace) -> dict[str, list[Problem]]:
    """Training problems (after ``--train-offset``) and the first ``--eval-n`` of the evaluation splits.

    Training stays off every problem of the shipped evaluation files, however few are evaluated here.
    """
    n_eval = max(args.eval_n, 1)
    held = {split: max(n_eval, DATA_SIZES[split]) for split in ("test", "held_out_frames")}
    splits = generate_splits({"train": args.train_offset + args.num_train, **held}, seed=args.seed)
    for split in held:
        splits[split] = splits[split][:n_eval]
    splits["train"] = splits["train"][args.train_offset :]
    return splits


def main(argv: list[str] | None = None) -> dict:
    """Build data, tokenizer and model, train, evaluate and save; return the training info dict."""
    args = parse_args(argv)
    out_dir = Path(args.output_dir)
    check_output_dir(out_dir, args.init_from, args.overwrite)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = "python " + " ".join(
        shlex.quote(a) for a in ([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
    )
    logger.info("command: %s", command)
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    if args.init_from:
        tokenizer = AutoTokenizer.from_pretrained(args.init_from)
    else:
        tokenizer = build_testbed_tokenizer(num_problems=args.tokenizer_problems, seed=args.seed)
    splits = make_splits(args)
    train_ds = build_examples(tokenizer, splits["train"], args.seed, args.plain_frac, args.mathqa_frac)
    logger.info(
        "train examples: %d, mean length %.1f tokens, data+tokenizer in %.1fs",
        len(train_ds),
        sum(train_ds["length"]) / len(train_ds),
        time.time() - t0,
    )

    arch = dict(SIZES[args.size])
    for key, val in (
        ("hidden_size", args.hidden_size),
        ("intermediate_size", args.intermediate_size),
        ("num_hidden_layers", args.num_layers),
    ):
        if val is not None:
            arch[key] = val
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=im_end,
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0,
        **arch,
    )
    config._attn_implementation = "sdpa"
    if args.init_from:
        model = AutoModelForCausalLM.from_pretrained(
            args.init_from, attn_implementation="sdpa", dtype=torch.float32
        )
        arch = {k: getattr(model.config, k) for k in arch}
        logger.info("initialised from %s", args.init_from)
    else:
        model = Qwen3ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("model: %s, %.2fM parameters", arch, n_params / 1e6)

    budget_s = None if args.max_steps is not None else args.time_budget_min * 60
    max_steps = args.max_steps if args.max_steps is not None else 10**7
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, make_lr_lambda(args.max_steps, budget_s, args.warmup_frac, args.min_lr_ratio, time.monotonic)
    )
    targs = TrainingArguments(
        output_dir=str(out_dir / "trainer"),
        per_device_train_batch_size=args.batch_size,
        max_steps=max_steps,
        num_train_epochs=100,
        logging_steps=25,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        dataloader_num_workers=0,
        max_grad_norm=1.0,
        use_cpu=not cuda,
        bf16=use_bf16(args.bf16, cuda),
        disable_tqdm=False,
        remove_unused_columns=False,
    )
    budget_cb = TimeBudget(budget_s, args.save_every_min * 60, out_dir, tokenizer)
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=train_ds,
        data_collator=PadCollator(tokenizer.pad_token_id),
        optimizers=(optim, sched),
        callbacks=[budget_cb],
    )
    t_train = time.time()
    result = trainer.train()
    train_s = time.time() - t_train
    steps = trainer.state.global_step
    tokens = steps * args.batch_size * sum(train_ds["length"]) / len(train_ds)
    logger.info(
        "trained %d steps in %.1f min (~%.0f tokens/s), final loss %.4f",
        steps,
        train_s / 60,
        tokens / train_s,
        result.training_loss,
    )

    model.generation_config = GenerationConfig(
        eos_token_id=im_end,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        do_sample=False,
        max_new_tokens=args.max_new_tokens,
    )
    model.config.use_cache = True
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)

    t_eval = time.time()
    evals = {
        split: greedy_accuracy(
            model, tokenizer, problems[: args.eval_n], args.eval_batch_size, args.max_new_tokens
        )
        for split, problems in splits.items()
        if split != "train" and args.eval_n > 0
    }
    metrics = evals.get("test", {})
    logger.info("held-out greedy eval: %s (%.1fs)", evals, time.time() - t_eval)
    info = {
        "command": command,
        "seed": args.seed,
        "data": "v2",
        "size": args.size,
        "architecture": arch,
        "num_parameters": n_params,
        "num_train_problems": args.num_train,
        "max_value": MAX_VALUE,
        "train_offset": args.train_offset,
        "init_from": args.init_from,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "steps": steps,
        "examples_seen": steps * args.batch_size,
        "approx_tokens_seen": int(tokens),
        "train_wall_time_s": round(train_s, 1),
        "total_wall_time_s": round(time.time() - t0, 1),
        "final_train_loss": result.training_loss,
        "threads": args.threads,
        "bf16": targs.bf16,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "heldout_greedy_eval": metrics,
        "greedy_eval": evals,
        "previous_runs": previous_runs(args.init_from),
    }
    (out_dir / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({"steps": steps, "train_min": round(train_s / 60, 2), "eval": evals}))
    return info


if __name__ == "__main__":
    main()
