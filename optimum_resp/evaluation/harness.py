"""End-to-end evaluation: prompts -> batched generation -> answer extraction -> accuracy with a Wilson CI.

Few-shot exemplars (``num_fewshot = k > 0``): with ``fewshot_split=None`` (default) the first ``k`` items of
the evaluation data are the exemplars and are excluded from scoring (``limit`` then counts the items after
them). With ``fewshot_split`` set (e.g. ``"train"``), the first ``k`` items of that split are used and every
evaluation item is scored; for local data this needs a folder with files named after that split.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config_mixin import ConfigMixin
from ..files import atomic_write
from ..generation import Completion, GenerationSettings, build_prompt
from ..generators import TraceGenerator, get_generator
from ..validation import check_int
from .extraction import THINK_CLOSE, THINK_OPEN
from .tasks import TASKS, TaskDataError, get_task, load_task_dataset, local_split_files

logger = logging.getLogger(__name__)

WILSON_Z_95 = 1.959963984540054
SUMMARY_FILE = "summary.json"
SAMPLES_FILE = "samples.jsonl"


@dataclass
class EvalConfig(ConfigMixin):
    """What to evaluate and how to decode; validated on construction and JSON round-trippable."""

    task: str = "gsm8k"
    data: str | None = None
    split: str = "test"
    limit: int | None = None
    num_fewshot: int = 0
    fewshot_split: str | None = None
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    """How to decode (a GenerationSettings, or a dict of its fields over the defaults: greedy, thinking on,
    up to 2048 new tokens, batches of 8)."""
    seed: int = 0
    """Seed of sampled decoding."""
    skip_invalid_rows: bool = False
    """Skip rows whose question is null, empty or not text (logged with a count) instead of refusing the data."""

    def __post_init__(self) -> None:
        """Validate fields early so a bad run fails before loading any model or data."""
        self.task = get_task(self.task).name
        if self.data is not None:
            self.data = os.fspath(self.data)
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit must be a positive integer or None, got {self.limit!r}")
        if not isinstance(self.num_fewshot, int) or self.num_fewshot < 0:
            raise ValueError(f"num_fewshot must be a non-negative integer, got {self.num_fewshot!r}")
        if self.fewshot_split is not None and self.fewshot_split == self.split:
            raise ValueError(f"fewshot_split must differ from split ({self.split!r}) or be None")
        self.generation = GenerationSettings.coerce(self.generation, name="generation")
        check_int("seed", self.seed, minimum=0)
        if not isinstance(self.skip_invalid_rows, bool):
            raise ValueError(f"skip_invalid_rows must be True or False; got {self.skip_invalid_rows!r}.")


@dataclass
class EvalResult:
    """Aggregate metrics (``summary``) and one audit record per scored item (``samples``)."""

    summary: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list, repr=False)
    """The generated answers with their token ids, in sample order (kept in memory, not saved)."""

    @property
    def accuracy(self) -> float:
        """Fraction of scored items answered correctly."""
        return float(self.summary["accuracy"])

    def save(self, output_dir: str | os.PathLike[str]) -> None:
        """Write ``samples.jsonl`` and ``summary.json`` atomically into ``output_dir``."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in self.samples)
        atomic_write(out / SAMPLES_FILE, lines)
        atomic_write(out / SUMMARY_FILE, json.dumps(self.summary, indent=2, ensure_ascii=False) + "\n")


def wilson_interval(correct: int, n: int, z: float = WILSON_Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); well-behaved at 0 and n."""
    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    p = correct / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if correct == 0 else max(0.0, center - half)
    high = 1.0 if correct == n else min(1.0, center + half)
    return low, high


def prompt_opens_think(prompt: str) -> bool:
    """Whether the prompt ends inside an open ``<think>`` block (templates that pre-open reasoning)."""
    return prompt.rfind(THINK_OPEN) > prompt.rfind(THINK_CLOSE)


EvalRows = tuple[list[dict[str, Any]], list[tuple[int, dict[str, Any]]]]
"""Few-shot exemplars, and the (dataset index, row) pairs to score."""


def load_eval_rows(config: EvalConfig) -> EvalRows:
    """Split the data into few-shot exemplars and (dataset index, row) pairs to score (see module docs); every
    row checked (`load_task_dataset`), so a command can do this before it loads a model."""
    spec = get_task(config.task)
    skip = config.skip_invalid_rows
    k = config.num_fewshot
    if config.fewshot_split is not None and k > 0:
        if config.data is not None and Path(config.data).expanduser().exists():
            if not local_split_files(config.data, config.fewshot_split):
                raise TaskDataError(
                    f"fewshot_split={config.fewshot_split!r} needs a folder with files named after that split; "
                    f"{config.data} has none (use fewshot_split=None to take exemplars from the head of the data)"
                )
        shots_ds = load_task_dataset(spec, config.data, config.fewshot_split, limit=k, skip_invalid_rows=skip)
        if len(shots_ds) < k:
            raise TaskDataError(
                f"Split {config.fewshot_split!r} has only {len(shots_ds)} rows, need {k} exemplars"
            )
        eval_ds = load_task_dataset(
            spec, config.data, config.split, limit=config.limit, skip_invalid_rows=skip
        )
        return [dict(r) for r in shots_ds], [(i, dict(r)) for i, r in enumerate(eval_ds)]
    total = None if config.limit is None else config.limit + k
    ds = load_task_dataset(spec, config.data, config.split, limit=total, skip_invalid_rows=skip)
    if len(ds) <= k:
        raise TaskDataError(f"Only {len(ds)} rows: nothing left to score after {k} few-shot exemplars")
    rows = [dict(r) for r in ds]
    return rows[:k], list(enumerate(rows))[k:]


def evaluate_model(
    model: Any,
    tokenizer: Any,
    config: EvalConfig,
    output_dir: str | os.PathLike[str] | None = None,
    show_progress: bool = True,
    generator: str | TraceGenerator = "hf",
    rows: EvalRows | None = None,
) -> EvalResult:
    """Generate answers for a task, score them, and optionally write samples.jsonl / summary.json.

    `generator` is the backend (`"hf"`, `"vllm"`, `"auto"` or a `TraceGenerator`): greedy answers are the same
    tokens through either; vLLM is faster where it is installed (CPU included), `auto` measures which. `rows`:
    `load_eval_rows(config)` when the caller loaded them already.
    """
    spec = TASKS[config.task]
    backend = get_generator(generator) if isinstance(generator, str) else generator
    shots, items = rows if rows is not None else load_eval_rows(config)
    fewshot = [(spec.build_user_text(r), spec.fewshot_answer(r)) for r in shots]
    golds = []
    for index, row in items:
        try:
            golds.append(spec.gold(row))
        except (ValueError, KeyError) as err:
            raise TaskDataError(
                f"{config.data or spec.hub_id}: bad gold answer in row {index}: {err}"
            ) from err
    prompts = [
        build_prompt(tokenizer, spec.build_user_text(row), config.generation.thinking, fewshot)
        for _, row in items
    ]
    logger.info(
        "Evaluating %s on %d items (%d-shot, thinking=%s)",
        spec.name,
        len(items),
        len(shots),
        config.generation.thinking,
    )

    completions = backend.generate(
        model, tokenizer, prompts, config.generation, seed=config.seed, show_progress=show_progress
    )

    samples: list[dict[str, Any]] = []
    for (index, row), gold, completion in zip(items, golds, completions, strict=True):
        extraction = spec.extract(completion.text, row, prompt_opens_think(completion.prompt))
        samples.append(
            {
                "index": index,
                "prompt": completion.prompt,
                "completion": completion.text,
                "extracted": extraction.answer,
                "gold": gold,
                "correct": bool(spec.is_correct(extraction.answer, gold)),
                "generated_tokens": completion.num_tokens,
                "truncated": completion.truncated,
                "rule": extraction.rule,
            }
        )

    n = len(samples)
    num_correct = sum(s["correct"] for s in samples)
    ci_low, ci_high = wilson_interval(num_correct, n)
    summary = {
        "task": spec.name,
        "n": n,
        "accuracy": num_correct / n,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "mean_generated_tokens": sum(s["generated_tokens"] for s in samples) / n,
        "truncated_fraction": sum(s["truncated"] for s in samples) / n,
        "tokens_per_second": completions.stats.tokens_per_second,
        "engine": backend.used,
        "config": config.to_dict(),
    }
    logger.info(
        "%s accuracy %.4f (95%% CI %.4f-%.4f) over %d items, %.1f tokens/item, %.1f%% truncated",
        spec.name,
        summary["accuracy"],
        ci_low,
        ci_high,
        n,
        summary["mean_generated_tokens"],
        100 * summary["truncated_fraction"],
    )
    result = EvalResult(summary=summary, samples=samples, completions=list(completions))
    if output_dir is not None:
        result.save(output_dir)
        logger.info("Wrote %s and %s to %s", SAMPLES_FILE, SUMMARY_FILE, output_dir)
    return result


__all__ = [
    "EvalConfig",
    "EvalResult",
    "EvalRows",
    "evaluate_model",
    "load_eval_rows",
    "prompt_opens_think",
    "wilson_interval",
]
