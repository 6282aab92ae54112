"""Testbed: synthetic multi-step arithmetic problems and a small shipped Qwen3 reasoner trained on them.

`problems` is the generator the shipped reasoner was trained on (one wording family); `compositional` is
generator v2 (many frames per operation, distractors, a held-out family of frames and names), the data
the next reasoner trains on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from .compositional import SPLITS_V2, generate_split_v2, generate_splits_v2, make_problem_v2, write_testbed_v2
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
    "SPLITS_V2",
    "TASKS",
    "Problem",
    "Step",
    "generate_problems",
    "generate_split",
    "generate_split_v2",
    "generate_splits_v2",
    "generate_splits",
    "make_problem",
    "make_problem_v2",
    "testbed_data_path",
    "testbed_model_path",
    "write_testbed",
    "write_testbed_v2",
]
