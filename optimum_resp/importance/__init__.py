"""Importance criteria for RESP structured pruning: one score per query head, KV group and MLP channel.

`get_scorer(name)` builds a registered criterion (`SCORERS`); `build_examples` turns prompts and the
model's own traces into decode-only calibration examples.
"""

from .base import (
    SCORERS,
    LayerScores,
    PrunableLinear,
    Scorer,
    Scores,
    ScoringStats,
    get_scorer,
    load_scores,
    prunable_linears,
    register_scorer,
    save_scores,
    structure_sums,
)
from .data import IGNORE_INDEX, CalibrationCollator, build_examples, check_examples
from .taylor import TaylorImportanceCallback, TaylorScorer

__all__ = [
    "IGNORE_INDEX",
    "SCORERS",
    "CalibrationCollator",
    "LayerScores",
    "PrunableLinear",
    "Scorer",
    "Scores",
    "ScoringStats",
    "TaylorImportanceCallback",
    "TaylorScorer",
    "build_examples",
    "check_examples",
    "get_scorer",
    "load_scores",
    "prunable_linears",
    "register_scorer",
    "save_scores",
    "structure_sums",
]
