"""Importance criteria for RESP structured pruning: one score per query head, KV group and MLP channel.

`get_scorer(name)` builds a registered criterion (`SCORERS`); `build_examples` turns the prompts' ids and
the ids of the model's own traces into decode-only calibration examples.
"""

from .activations import ActivationScoringConfig, FeatureStats, collect_input_stats
from .base import (
    SCORERS,
    LayerScores,
    PrunableLinear,
    Scorer,
    Scores,
    ScoringConfig,
    ScoringStats,
    get_scorer,
    load_scores,
    prunable_linears,
    register_scorer,
    save_scores,
    scorer_class,
    structure_sums,
)
from .data import IGNORE_INDEX, CalibrationCollator, build_examples, check_examples
from .flap import FLAPScorer
from .magnitude import MagnitudeScorer
from .taylor import TaylorConfig, TaylorImportanceCallback, TaylorScorer
from .wanda import WandaSPScorer

__all__ = [
    "IGNORE_INDEX",
    "SCORERS",
    "ActivationScoringConfig",
    "CalibrationCollator",
    "FLAPScorer",
    "FeatureStats",
    "LayerScores",
    "MagnitudeScorer",
    "PrunableLinear",
    "Scorer",
    "Scores",
    "ScoringConfig",
    "ScoringStats",
    "TaylorConfig",
    "TaylorImportanceCallback",
    "TaylorScorer",
    "WandaSPScorer",
    "build_examples",
    "check_examples",
    "collect_input_stats",
    "get_scorer",
    "load_scores",
    "prunable_linears",
    "register_scorer",
    "save_scores",
    "scorer_class",
    "structure_sums",
]
