"""Calibration traces from each source, and SSGR-style selection among self-generated ones.

- `self`: the model answers the prompts itself (chat template, thinking on): RESP's calibration.
- `gold`: human-written solutions (GSM8K's `answer` field) as completions: the GISP / LLM-Pruner style
  baseline RESP is compared against.
- `text`: plain text, scored with the full-sequence loss.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..evaluation.tasks import TaskSpec, get_task, load_task_dataset
from ..generation import build_prompt, encode_prompts, encode_text, end_token_ids
from ..generators import TraceGenerator
from .traces import CalibrationPrompt, Trace

if TYPE_CHECKING:
    from .config import CalibrationConfig

logger = logging.getLogger(__name__)

__all__ = [
    "build_traces",
    "chat_prompts",
    "check_traces",
    "prompts_from_task",
    "select_by_difficulty",
    "select_traces",
]

# Above this fraction of unfinished traces, or below this fraction of right answers, a prune is warned about.
WARN_TRUNCATED_FRACTION = 0.5
WARN_CORRECT_FRACTION = 0.05


def prompts_from_task(
    task: str | TaskSpec,
    data: str | None = None,
    split: str = "train",
    limit: int | None = None,
    seed: int = 0,
    skip_invalid_rows: bool = False,
) -> list[CalibrationPrompt]:
    """Calibration prompts from a GSM8K / MathQA-format dataset (Hub id or local file), shuffled with `seed`.

    A row whose question is null, empty or not text is refused, naming its line, unless `skip_invalid_rows`."""
    spec = get_task(task)
    dataset = load_task_dataset(spec, data, split=split, skip_invalid_rows=skip_invalid_rows).shuffle(
        seed=seed
    )
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    solution_field = {"gsm8k": "answer", "mathqa": "Rationale"}.get(spec.name)
    return [
        CalibrationPrompt(
            question=spec.build_user_text(row),
            gold=spec.gold(row),
            solution=str(row[solution_field]) if solution_field and row.get(solution_field) else None,
            example=dict(row),
        )
        for row in dataset
    ]


def _judge(task: TaskSpec | None, prompt: CalibrationPrompt, completion: str) -> bool | None:
    if task is None or prompt.gold is None:
        return None
    answer = task.extract(completion, prompt.example, False).answer
    return bool(task.is_correct(answer, task.normalize_gold(prompt.gold)))


def chat_prompts(tokenizer, prompts: Sequence[CalibrationPrompt], thinking: bool) -> list[str]:
    """The calibration prompts as the model is asked them: its chat template, a generation prompt, thinking on or
    off (the one place calibration renders them)."""
    return [build_prompt(tokenizer, p.question, thinking=thinking) for p in prompts]


def build_traces(
    model,
    tokenizer,
    prompts: Sequence[CalibrationPrompt],
    calibration: CalibrationConfig,
    generator: TraceGenerator,
    task: str | TaskSpec | None = None,
    seed: int = 0,
) -> list[Trace]:
    """Calibration traces for `prompts` from `calibration.source`, filtered as the section asks; each carries the
    ids its prompt is fed as and the ids generated (a gold solution or a text: its tokens). `seed` seeds sampling."""
    spec = get_task(task) if task is not None else None
    if calibration.source == "text":
        return [
            Trace(
                p.question,
                "",
                p.question,
                0,
                False,
                prompt_ids=[],
                completion_ids=encode_text(tokenizer, p.question),
            )
            for p in prompts
        ]
    chat = chat_prompts(tokenizer, prompts, calibration.generation.thinking)
    chat_ids = encode_prompts(tokenizer, chat)
    end_id = end_token_ids(tokenizer, model)[0]
    end_text = tokenizer.decode([end_id])
    if calibration.source == "gold":
        missing = [i for i, p in enumerate(prompts) if not p.solution]
        if missing:
            raise ValueError(
                f"calibration_source='gold' needs a human-written solution for every prompt; prompts {missing[:10]} "
                "have none. Load prompts with prompts_from_task (GSM8K 'answer', MathQA 'Rationale')."
            )
        return [
            Trace(
                p.question,
                c,
                p.solution + end_text,
                0,
                False,
                p.gold,
                prompt_ids=ids,
                completion_ids=encode_text(tokenizer, p.solution) + [end_id],
            )
            for p, c, ids in zip(prompts, chat, chat_ids)
        ]

    completions = generator.generate(model, tokenizer, chat, calibration.generation, seed)
    traces = [
        Trace(
            question=p.question,
            prompt=c.prompt,
            completion=c.text + ("" if c.truncated else end_text),
            num_tokens=c.num_tokens,
            truncated=c.truncated,
            gold=p.gold,
            correct=_judge(spec, p, c.text),
            prompt_ids=ids,
            completion_ids=list(c.token_ids),
        )
        for p, c, ids in zip(prompts, completions, chat_ids)
    ]
    return select_traces(traces, calibration)


def select_traces(traces: list[Trace], calibration: CalibrationConfig) -> list[Trace]:
    """Apply keep_truncated, filter_correct and the length-quantile window; refuse an empty result."""
    n = len(traces)
    kept = traces
    if not calibration.keep_truncated:
        kept = [t for t in kept if not t.truncated]
        if not kept:
            raise ValueError(
                f"All {n} calibration traces hit max_new_tokens={calibration.generation.max_new_tokens} and keep_truncated is "
                "False: raise max_new_tokens, or set keep_truncated=True (the RESP reference keeps them)."
            )
    if calibration.filter_correct:
        if any(t.correct is None for t in kept):
            raise ValueError(
                "filter_correct needs gold answers and a task (prompts_from_task) to judge traces."
            )
        kept = [t for t in kept if t.correct]
        if not kept:
            raise ValueError(
                "filter_correct removed every trace: the model solved none of the calibration prompts."
            )
    if calibration.selection_length_quantiles:
        lengths = torch.tensor([float(t.num_tokens) for t in kept])
        low, high = (torch.quantile(lengths, q).item() for q in calibration.selection_length_quantiles)
        kept = [t for t in kept if low <= t.num_tokens <= high]
    logger.info(
        "Calibration traces: %d of %d kept; mean %.0f tokens, %.0f%% truncated%s",
        len(kept),
        n,
        sum(t.num_tokens for t in kept) / max(len(kept), 1),
        100 * sum(t.truncated for t in kept) / max(len(kept), 1),
        ""
        if kept[0].correct is None
        else f", {100 * sum(bool(t.correct) for t in kept) / len(kept):.0f}% correct",
    )
    return kept


def check_traces(traces: Sequence[Trace], calibration: CalibrationConfig, dense: bool = True) -> None:
    """Warn loudly when most traces never finished or almost none is right, and refuse the dense model's traces
    when none finished, unless `calibration.allow_unfinished_traces`: such traces mean the model and its
    tokenizer or chat template do not fit together, or max_new_tokens is far too small, and scoring them
    prunes for noise."""
    if not traces or calibration.source != "self":
        return
    n = len(traces)
    truncated = sum(t.truncated for t in traces) / n
    budget = calibration.generation.max_new_tokens
    where = "the dense model's" if dense else "the pruned model's regenerated"
    if truncated == 1.0 and dense and not calibration.allow_unfinished_traces:
        raise ValueError(
            f"None of {where} {n} calibration traces finished within max_new_tokens={budget}: the model never "
            "ended its answer. Check that the tokenizer and chat template belong to this model, raise "
            "generation.max_new_tokens, or set allow_unfinished_traces=True (CLI --allow-unfinished-traces; e.g. "
            "for a random-weight model) to prune on them anyway."
        )
    if truncated > WARN_TRUNCATED_FRACTION:
        logger.warning(
            "%.0f%% of %s %d calibration traces hit max_new_tokens=%d without finishing: the importance scores "
            "then describe unfinished reasoning. Raise generation.max_new_tokens, or check the chat template.",
            100 * truncated,
            where,
            n,
            budget,
        )
    judged = [t.correct for t in traces if t.correct is not None]
    if judged and sum(judged) / len(judged) < WARN_CORRECT_FRACTION:
        logger.warning(
            "Only %d of %s %d judged calibration traces answer correctly: check that the task format and the "
            "tokenizer fit this model (the report records the fraction).",
            sum(judged),
            where,
            len(judged),
        )


def select_by_difficulty(
    model,
    tokenizer,
    prompts: Sequence[CalibrationPrompt],
    calibration: CalibrationConfig,
    generator: TraceGenerator,
    task: str | TaskSpec,
    seed: int = 0,
) -> tuple[list[CalibrationPrompt], list[float]]:
    """SSGR: keep the hardest `selection_keep_fraction` of prompts, difficulty being the model's failure
    rate over `selection_difficulty_samples` sampled answers (ties keep their original order)."""
    spec = get_task(task)
    k = calibration.selection_difficulty_samples
    if any(p.gold is None for p in prompts):
        raise ValueError("Difficulty selection needs a gold answer for every prompt (use prompts_from_task).")
    chat = chat_prompts(tokenizer, prompts, calibration.generation.thinking)
    failures = [0] * len(prompts)
    for sample in range(k):
        completions = generator.generate(
            model,
            tokenizer,
            chat,
            dataclasses.replace(calibration.generation, do_sample=True),
            seed + 1000 * (sample + 1),
        )
        for i, (p, c) in enumerate(zip(prompts, completions)):
            failures[i] += not _judge(spec, p, c.text)
    rates = [f / k for f in failures]
    order = sorted(range(len(prompts)), key=lambda i: -rates[i])
    keep = sorted(order[: max(1, round(calibration.selection_keep_fraction * len(prompts)))])
    logger.info(
        "Difficulty selection kept %d of %d prompts (mean failure rate %.2f -> %.2f)",
        len(keep),
        len(prompts),
        sum(rates) / len(rates),
        sum(rates[i] for i in keep) / len(keep),
    )
    return [prompts[i] for i in keep], [rates[i] for i in keep]
