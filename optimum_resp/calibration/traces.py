"""Calibration prompts and traces, and their JSONL form (checkpointed per stage, so runs can resume)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..files import atomic_write
from ..generation import encode_text

__all__ = ["CalibrationPrompt", "Trace", "as_prompts", "load_traces", "save_traces", "trace_token_ids"]


@dataclass
class CalibrationPrompt:
    """One calibration problem: the user turn and, optionally, its gold answer, a human-written
    solution, and the dataset row it came from (MathQA's options are needed to judge an answer)."""

    question: str
    gold: str | None = None
    solution: str | None = None
    example: dict | None = None


@dataclass
class Trace:
    """A chat-formatted prompt and the completion the model (or a human) gave for it, as text and as the token
    ids the model was prompted with and generated (what scoring and recovery train on)."""

    question: str
    prompt: str
    completion: str  # ends with the end-of-turn token's text unless truncated
    num_tokens: int
    truncated: bool
    gold: str | None = None
    correct: bool | None = None
    prompt_ids: list[int] | None = None  # None in traces saved before ids were kept
    completion_ids: list[int] | None = None  # ends with the end-of-turn token unless truncated

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def token_ids(self, tokenizer: Any) -> tuple[list[int], list[int]]:
        """The prompt's and the completion's ids; a trace saved without them (by an older version) tokenizes
        its text as that version scored it: each part alone, without special tokens."""
        if self.prompt_ids is not None and self.completion_ids is not None:
            return list(self.prompt_ids), list(self.completion_ids)
        return encode_text(tokenizer, self.prompt), encode_text(tokenizer, self.completion)


def trace_token_ids(tokenizer: Any, traces: Sequence[Trace]) -> tuple[list[list[int]], list[list[int]]]:
    """The prompts' and the completions' ids of `traces` (see `Trace.token_ids`), as two aligned lists."""
    pairs = [t.token_ids(tokenizer) for t in traces]
    return [p for p, _ in pairs], [c for _, c in pairs]


def as_prompts(prompts: Iterable[str | Mapping[str, Any] | CalibrationPrompt]) -> list[CalibrationPrompt]:
    """Accept bare questions, dicts with `question` (and `gold`, `solution`), or CalibrationPrompts."""
    if isinstance(prompts, (str, bytes, Mapping, CalibrationPrompt)):
        # Iterating one of these would make a calibration set of its characters or its keys.
        shown = repr(prompts if not isinstance(prompts, CalibrationPrompt) else prompts.question)[:60]
        raise ValueError(
            f"prompts must be a list of calibration prompts, but one {type(prompts).__name__} was passed "
            f"({shown}). Wrap it in a list: [{shown}]."
        )
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, CalibrationPrompt):
            out.append(p)
        elif isinstance(p, str):
            out.append(CalibrationPrompt(p))
        elif isinstance(p, Mapping) and "question" in p:
            out.append(CalibrationPrompt(p["question"], p.get("gold"), p.get("solution"), p.get("example")))
        else:
            raise ValueError(
                f"Calibration prompt {i} is a {type(p).__name__}; pass strings, CalibrationPrompt objects, or "
                "dicts with a 'question' key (and optionally 'gold' and 'solution')."
            )
    # A question that is not text would become a prompt such as "None" (str(None)): refused, not converted.
    empty = [i for i, p in enumerate(out) if not isinstance(p.question, str) or not p.question.strip()]
    if not out or len(empty) == len(out):
        raise ValueError("No calibration prompts: pass at least one non-empty question.")
    if empty:
        shown = ", ".join(f"{i}: {out[i].question!r}" for i in empty[:10])
        raise ValueError(f"Calibration prompts {empty[:10]} are empty or not text ({shown}); remove them.")
    return out


def save_traces(traces: Sequence[Trace], path: str | os.PathLike) -> None:
    """Write traces as JSONL, atomically (temp file in the same folder, then rename)."""
    atomic_write(path, "".join(json.dumps(t.to_dict(), ensure_ascii=False) + "\n" for t in traces))


def load_traces(path: str | os.PathLike) -> list[Trace]:
    """Read traces written by `save_traces`; a damaged line is an error naming the file and the line."""
    traces = []
    with open(path, encoding="utf-8", errors="strict") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                traces.append(Trace(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as err:
                raise ValueError(
                    f"{path}, line {number}: not a saved trace ({err}). The file is damaged: delete it (or the "
                    "stage folder holding it) and run again."
                ) from err
    return traces
