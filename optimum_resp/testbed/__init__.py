"""Testbed: synthetic multi-step arithmetic word problems and a small shipped Qwen3 reasoner trained on them.

`compositional` is the generator (distractors, several people, a held-out family of frames and names), drawing
its sentences from `grammar` (many sentence frames per operation); `problems` holds the records it makes. `data/` ships its splits in GSM8K and MathQA form, and
`tiny_reasoner/` the model trained on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from .compositional import SPLIT_SPECS, generate_split, generate_splits, make_problem, write_testbed
from .problems import REASONING_SUFFIX, Problem, Step

_HERE = Path(__file__).resolve().parent
TASKS = ("gsm8k", "mathqa")
SPLITS = tuple(SPLIT_SPECS)
"""The shipped splits: train, test (training's frames), held_out_frames (frames and names never trained on), hard."""
DATA_SIZES = {"train": 1000, "test": 500, "held_out_frames": 500, "hard": 200}
"""Problems per split in the shipped files (seed 0); the training script keeps its training problems off this
many of every evaluation split."""


def testbed_model_path() -> Path:
    """Return the folder of the shipped tiny reasoner checkpoint (loadable with ``from_pretrained``)."""
    return _HERE / "tiny_reasoner"


def testbed_data_path(task: Literal["gsm8k", "mathqa"] = "gsm8k", split: str = "test") -> Path:
    """Return the shipped jsonl file for ``task`` (``gsm8k`` or ``mathqa``) and ``split`` (see ``SPLITS``)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return _HERE / "data" / f"{task}_{split}.jsonl"


# keep pytest from collecting these as tests when they are imported into test modules
testbed_model_path.__test__ = False  # type: ignore[attr-defined]
testbed_data_path.__test__ = False  # type: ignore[attr-defined]

__all__ = [
    "DATA_SIZES",
    "REASONING_SUFFIX",
    "SPLITS",
    "SPLIT_SPECS",
    "TASKS",
    "Problem",
    "Step",
    "generate_split",
    "generate_splits",
    "make_problem",
    "testbed_data_path",
    "testbed_model_path",
    "write_testbed",
]
