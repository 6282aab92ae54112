"""Testbed: synthetic multi-step arithmetic problems and a small shipped Qwen3 reasoner trained on them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from .problems import (
    REASONING_SUFFIX,
    SPLIT_STEPS,
    Problem,
    Step,
    generate_problems,
    generate_split,
    generate_splits,
    make_problem,
    write_testbed,
)

_HERE = Path(__file__).resolve().parent
TASKS = ("gsm8k", "mathqa")
SPLITS = ("train", "test", "hard")


def testbed_model_path() -> Path:
    """Return the folder of the shipped tiny reasoner checkpoint (loadable with ``from_pretrained``)."""
    return _HERE / "tiny_reasoner"


def testbed_data_path(task: Literal["gsm8k", "mathqa"] = "gsm8k", split: str = "test") -> Path:
    """Return the shipped jsonl file for ``task`` (``gsm8k`` or ``mathqa``) and ``split`` (train/test/hard)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return _HERE / "data" / f"{task}_{split}.jsonl"


# keep pytest from collecting these as tests when they are imported into test modules
testbed_model_path.__test__ = False  # type: ignore[attr-defined]
testbed_data_path.__test__ = False  # type: ignore[attr-defined]

__all__ = [
    "REASONING_SUFFIX",
    "SPLITS",
    "SPLIT_STEPS",
    "TASKS",
    "Problem",
    "Step",
    "generate_problems",
    "generate_split",
    "generate_splits",
    "make_problem",
    "testbed_data_path",
    "testbed_model_path",
    "write_testbed",
]
