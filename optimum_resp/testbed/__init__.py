"""Testbed: synthetic multi-step arithmetic problems and a small shipped Qwen3 reasoner trained on them.

`problems` is the generator the shipped reasoner was trained on (one wording family); `compositional` is
generator v2 (many frames per operation, distractors, a held-out family of frames and names), the data
the next reasoner trains on.
"""

from __future__ import annotations

import json
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
DATA_VERSIONS: dict[str, tuple[str, ...]] = {"v1": SPLITS, "v2": tuple(SPLITS_V2)}
"""Shipped problem files per generator: v1 (`problems`, the shipped reasoner's) and v2 (`compositional`)."""
DATA_V2_SIZES = {"train": 1000, "test": 500, "held_out_frames": 500, "hard": 200}
"""Problems per split in the shipped v2 files (seed 0); the training script keeps its training problems off
this many of every evaluation split."""


def testbed_model_path() -> Path:
    """Return the folder of the shipped tiny reasoner checkpoint (loadable with ``from_pretrained``)."""
    return _HERE / "tiny_reasoner"


def testbed_data_path(
    task: Literal["gsm8k", "mathqa"] = "gsm8k",
    split: str = "test",
    version: Literal["v1", "v2"] | None = None,
) -> Path:
    """Return the shipped jsonl file for ``task`` (``gsm8k`` or ``mathqa``) and ``split`` of generator ``version``
    (v1: train/test/hard; v2: train/test/held_out_frames/hard); by default the generator the shipped model was
    trained on, so its calibration prompts and evaluation problems match it."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    version = trained_data_version(testbed_model_path()) if version is None else version
    if version not in DATA_VERSIONS:
        raise ValueError(f"unknown data version {version!r}; expected one of {list(DATA_VERSIONS)}")
    if split not in DATA_VERSIONS[version]:
        raise ValueError(f"unknown {version} split {split!r}; expected one of {DATA_VERSIONS[version]}")
    return _HERE / ("data" if version == "v1" else f"data_{version}") / f"{task}_{split}.jsonl"


def trained_data_version(model_path: str | Path) -> str:
    """The problem generator a testbed checkpoint was trained on (its training_info.json; v1 when unrecorded),
    which decides the files it is evaluated on."""
    info = Path(model_path) / "training_info.json"
    return json.loads(info.read_text()).get("data", "v1") if info.exists() else "v1"


# keep pytest from collecting these as tests when they are imported into test modules
testbed_model_path.__test__ = False  # type: ignore[attr-defined]
testbed_data_path.__test__ = False  # type: ignore[attr-defined]

__all__ = [
    "DATA_V2_SIZES",
    "DATA_VERSIONS",
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
    "trained_data_version",
    "write_testbed",
    "write_testbed_v2",
]
