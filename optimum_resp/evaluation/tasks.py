"""Benchmark task registry (GSM8K, MathQA): prompts, gold answers, extraction and dataset loading."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from ..registry import Registry
from .extraction import (
    Extraction,
    extract_choice_answer,
    extract_gsm8k_gold,
    extract_numeric_answer,
    normalize_choice,
    normalize_number,
    numbers_equal,
    parse_mathqa_options,
)

logger = logging.getLogger(__name__)

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class TaskDataError(ValueError):
    """A task's data cannot be loaded or lacks a required field (always names the source)."""


@dataclass(frozen=True)
class TaskSpec:
    """Everything the harness needs to know about one benchmark."""

    name: str
    hub_id: str
    hub_config: str | None
    fields: tuple[str, ...]
    build_user_text: Callable[[Mapping[str, Any]], str]
    gold: Callable[[Mapping[str, Any]], str]
    normalize_gold: Callable[[str], str]
    extract: Callable[[str, Mapping[str, Any] | None, bool], Extraction]
    is_correct: Callable[[str | None, str], bool]
    fewshot_answer: Callable[[Mapping[str, Any]], str]
    question_field: str = "question"
    """The field holding the problem's text: every row must have it as non-empty text."""
    default_split: str = "test"
    description: str = ""


# --------------------------------------------------------------------------------------------- GSM8K

_CALC_RE = re.compile(r"<<[^<>]*>>")
GSM8K_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def _gsm8k_user_text(example: Mapping[str, Any]) -> str:
    """GSM8K question followed by the standard step-by-step / boxed-answer instruction."""
    return f"{str(example['question']).strip()}\n\n{GSM8K_INSTRUCTION}"


def _gsm8k_gold(example: Mapping[str, Any]) -> str:
    """Gold number from the ``answer`` field (after ``####``)."""
    return extract_gsm8k_gold(str(example["answer"]))


def _gsm8k_normalize_gold(reference: str) -> str:
    """Accept either a full GSM8K answer (with ``####``) or a bare number as reference."""
    if "####" in str(reference):
        return extract_gsm8k_gold(str(reference))
    value = normalize_number(str(reference))
    if value is None:
        raise ValueError(f"GSM8K reference is not a number: {reference!r}")
    return value


def _gsm8k_extract(completion: str, example: Mapping[str, Any] | None, think_open: bool) -> Extraction:
    """Numeric extraction (the example is not needed)."""
    return extract_numeric_answer(completion, think_open=think_open)


def _gsm8k_fewshot_answer(example: Mapping[str, Any]) -> str:
    """Exemplar answer: the worked solution without calculator annotations, ending in a boxed answer."""
    answer = str(example["answer"])
    body = _CALC_RE.sub("", answer.rsplit("####", 1)[0]).strip()
    return f"{body}\nThe answer is \\boxed{{{_gsm8k_gold(example)}}}."


# --------------------------------------------------------------------------------------------- MathQA

MATHQA_INSTRUCTION = "Please reason step by step, and put the letter of the correct option within \\boxed{}."


def format_mathqa_options(options: Any) -> str:
    """Options as readable lines (``a) 38``) from MathQA's ``'a ) 38 , b ) ...'`` string or a list."""
    return "\n".join(f"{letter}) {text}" for letter, text in parse_mathqa_options(options).items())


def _mathqa_user_text(example: Mapping[str, Any]) -> str:
    """MathQA problem, its options one per line, and the boxed-letter instruction."""
    problem = str(example["Problem"]).strip()
    return f"{problem}\n\nOptions:\n{format_mathqa_options(example['options'])}\n\n{MATHQA_INSTRUCTION}"


def _mathqa_gold(example: Mapping[str, Any]) -> str:
    """Gold option letter from the ``correct`` field."""
    return normalize_choice(str(example["correct"]))


def _mathqa_extract(completion: str, example: Mapping[str, Any] | None, think_open: bool) -> Extraction:
    """Option-letter extraction; the example's options allow matching a numeric answer."""
    options = example.get("options") if example is not None else None
    return extract_choice_answer(completion, options if options else None, think_open=think_open)


def _mathqa_fewshot_answer(example: Mapping[str, Any]) -> str:
    """Exemplar answer: the cleaned rationale (if any) ending in a boxed letter."""
    letter = _mathqa_gold(example)
    rationale = str(example.get("Rationale") or "").strip().strip("\"'").strip()
    rationale = re.sub(r"^explanation\s*:\s*", "", rationale, flags=re.IGNORECASE)
    rationale = re.sub(r"\s*\.?\s*answer\s*:?\s*\(?[a-e]\)?\s*\.?\s*$", "", rationale, flags=re.IGNORECASE)
    prefix = f"{rationale.strip()}\n" if rationale.strip() else ""
    return f"{prefix}The answer is \\boxed{{{letter}}}."


def _letters_equal(pred: str | None, gold: str) -> bool:
    """Exact option-letter match."""
    return pred is not None and pred == gold


TASKS: Registry[TaskSpec] = Registry(
    "task",
    normalize=lambda name: name.lower().replace("-", "").replace("_", ""),
    hint="Register one with `optimum_resp.evaluation.TASKS.register(spec.name, spec)`.",
)
"""Task name (`--task`, `EvalConfig.task`; case, '-' and '_' ignored) -> TaskSpec."""

for _spec in (
    TaskSpec(
        name="gsm8k",
        hub_id="openai/gsm8k",
        hub_config="main",
        fields=("question", "answer"),
        build_user_text=_gsm8k_user_text,
        gold=_gsm8k_gold,
        normalize_gold=_gsm8k_normalize_gold,
        extract=_gsm8k_extract,
        is_correct=numbers_equal,
        fewshot_answer=_gsm8k_fewshot_answer,
        description="Grade-school math word problems; numeric answers.",
    ),
    TaskSpec(
        name="mathqa",
        hub_id="allenai/math_qa",
        hub_config=None,
        fields=("Problem", "options", "correct"),
        build_user_text=_mathqa_user_text,
        gold=_mathqa_gold,
        normalize_gold=normalize_choice,
        extract=_mathqa_extract,
        is_correct=_letters_equal,
        fewshot_answer=_mathqa_fewshot_answer,
        question_field="Problem",
        description="Multiple-choice math word problems (options a-e).",
    ),
):
    TASKS.register(_spec.name, _spec)
del _spec


def get_task(task: str | TaskSpec) -> TaskSpec:
    """Look a task up in the registry (clear error listing the known tasks)."""
    return task if isinstance(task, TaskSpec) else TASKS.lookup(str(task))


# --------------------------------------------------------------------------------------------- loading


def _looks_like_path(source: str) -> bool:
    """Whether ``source`` is meant as a local path rather than a Hub id (``owner/name``)."""
    return (
        source.startswith((".", "/", "~"))
        or Path(source).suffix.lower() in LOCAL_BUILDERS
        or source.count("/") > 1
        or "\\" in source
    )


def _split_named(files: list[Path], split: str) -> list[Path]:
    """The files whose name marks them as ``split`` (``test.jsonl``, ``test-00000-of-00001.parquet``)."""
    return [p for p in files if p.stem == split or p.stem.startswith((f"{split}-", f"{split}_"))]


def _local_files(path: Path, split: str) -> list[Path]:
    """Data files of a local source: the file itself, or a folder's files (those named after the split first)."""
    if path.is_file():
        if path.suffix.lower() not in LOCAL_BUILDERS:
            raise TaskDataError(f"Unsupported data file {path}: expected one of {sorted(LOCAL_BUILDERS)}")
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in LOCAL_BUILDERS)
    if not files:
        raise TaskDataError(f"No .jsonl/.json/.parquet files in folder {path}")
    return _split_named(files, split) or files


def local_split_files(data: str | os.PathLike[str], split: str) -> list[Path]:
    """Files of a local folder named after ``split`` (empty for a single file or a folder without split names)."""
    path = Path(data).expanduser()
    if not path.is_dir():
        return []
    return _split_named(sorted(p for p in path.iterdir() if p.suffix.lower() in LOCAL_BUILDERS), split)


def _check_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Refuse a .jsonl file that is empty, not UTF-8, or has a line that is not a JSON object, naming the line
    (datasets would fail later with a parser trace that names neither). Returns each row with its line number."""
    rows = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as err:
                raise TaskDataError(
                    f"{path}, line {number}: not UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1}). "
                    "Save the file as UTF-8."
                ) from None
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskDataError(
                    f"{path}, line {number}: not valid JSON ({err.msg} at column {err.colno}). Each line of a .jsonl "
                    "file must be one JSON object."
                ) from None
            if not isinstance(row, dict):
                raise TaskDataError(
                    f"{path}, line {number}: a JSON {type(row).__name__}, not an object: each line of a .jsonl "
                    'file must be one object such as {"question": ..., "answer": ...}.'
                )
            rows.append((number, row))
    if not rows:
        raise TaskDataError(f"{path} is empty: it has no JSON lines.")
    return rows


_MISSING = object()


def _not_text(value: Any) -> str | None:
    """Why `value` cannot be a problem's text (None when it can)."""
    if value is _MISSING:
        return "missing"
    if value is None:
        return "null"
    if not isinstance(value, str):
        return f"a {type(value).__name__} ({value!r}), not text"
    if not value.strip():
        return "empty" if not value else "only whitespace"
    return None


def _usable_rows(field: str, values: list[Any], where: Callable[[int], str], skip: bool) -> list[int] | None:
    """Refuse rows whose question is missing, null, empty, whitespace or not text (they would become the prompt
    "None", or the instruction alone), naming the first (`where(i)`); with `skip`, the indices of the rows to keep
    (None: every row is usable), the rest counted in a warning."""
    bad = [(i, why) for i, value in enumerate(values) if (why := _not_text(value)) is not None]
    if not bad:
        return None
    i, why = bad[0]
    if not skip:
        raise TaskDataError(
            f"{where(i)}: field {field!r} is {why}; {len(bad)} of {len(values)} rows have no usable {field!r}. Fix "
            "those rows, or skip them (CLI --skip-invalid-rows, API skip_invalid_rows=True)."
        )
    if len(bad) == len(values):
        raise TaskDataError(
            f"{where(i)}: field {field!r} is {why}, and so is every row's: nothing is left to use."
        )
    logger.warning(
        "Skipped %d of %d rows whose %r is missing, null, empty or not text (the first: %s, %s).",
        len(bad),
        len(values),
        field,
        where(i),
        why,
    )
    dropped = {i for i, _ in bad}
    return [i for i in range(len(values)) if i not in dropped]


def _load_local(path: Path, split: str, field: str, skip: bool) -> datasets.Dataset:
    """Read local json/jsonl/parquet data into a `datasets.Dataset`. The questions of .jsonl rows are checked as
    read, naming the file and line (`_usable_rows`); rows skipped there are left out of the dataset."""
    files = _local_files(path, split)
    builders = {LOCAL_BUILDERS[p.suffix.lower()] for p in files}
    if len(builders) > 1:
        raise TaskDataError(f"Mixed json and parquet files in {path}; keep one format per folder")
    rows = [
        (f"{file}, line {n}", row)
        for file in files
        if file.suffix.lower() == ".jsonl"
        for n, row in _check_jsonl(file)
    ]
    if rows and all(f.suffix.lower() == ".jsonl" for f in files) and any(field in r for _, r in rows):
        keep = _usable_rows(field, [r.get(field, _MISSING) for _, r in rows], lambda i: rows[i][0], skip)
        if keep is not None:  # as read: datasets' reader may choke on the types of the rows left out
            return datasets.Dataset.from_list([rows[i][1] for i in keep])
    shown = ", ".join(str(p) for p in files)
    try:
        ds = datasets.load_dataset(builders.pop(), data_files=[str(p) for p in files], split="train")
    except Exception as err:  # datasets raises many different types for malformed files
        raise TaskDataError(f"Cannot read data file(s) {shown}: {type(err).__name__}: {err}") from err
    logger.info("Loaded %d rows from %s", len(ds), shown)
    return ds


def load_task_dataset(
    task: str | TaskSpec,
    data: str | os.PathLike[str] | None = None,
    split: str = "test",
    limit: int | None = None,
    skip_invalid_rows: bool = False,
) -> datasets.Dataset:
    """Load a task's examples from the Hub (default id) or a local .jsonl/.json/.parquet file or folder.

    A folder uses its files named after ``split`` (``test.jsonl``, ``test-00000-of-00001.parquet``) when
    there are any, else all its data files; a single local file is used whole whatever ``split`` says.
    A row whose question is null, empty, whitespace or not text is refused, naming its file and line (or
    index), unless ``skip_invalid_rows``, which drops such rows and logs how many.
    """
    spec = get_task(task)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    source = str(data) if data is not None else spec.hub_id
    path = Path(source).expanduser()
    if path.exists():
        ds = _load_local(path, split, spec.question_field, skip_invalid_rows)
    elif _looks_like_path(source):
        raise TaskDataError(f"Data file or folder {source} does not exist")
    else:
        try:
            ds = datasets.load_dataset(source, spec.hub_config, split=split)
        except Exception as err:
            raise TaskDataError(
                f"Could not load {spec.name} data {source!r} (config {spec.hub_config!r}, split {split!r}) from the "
                f"Hugging Face Hub: {type(err).__name__}: {err}. If you are offline, pass a local .jsonl/.json/"
                ".parquet file or folder as `data` instead."
            ) from err
    missing = [f for f in spec.fields if f not in ds.column_names]
    if missing:
        raise TaskDataError(
            f"{source}: missing required field(s) {missing} for task {spec.name!r} "
            f"(found columns {ds.column_names})"
        )
    if len(ds) == 0:
        raise TaskDataError(f"{source}: no examples for task {spec.name!r} (split {split!r})")
    keep = _usable_rows(
        spec.question_field, list(ds[spec.question_field]), lambda i: f"{source}, row {i}", skip_invalid_rows
    )
    if keep is not None:
        ds = ds.select(keep)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


__all__ = [
    "TASKS",
    "TaskDataError",
    "TaskSpec",
    "format_mathqa_options",
    "get_task",
    "load_task_dataset",
    "local_split_files",
]
