"""Magnitude importance: the squared L2 norm of each structure's weights, a data-free baseline.

The norm runs over every slice the surgery removes with the structure: a query head's q_proj rows
(and q bias entries) plus its o_proj columns, a KV group's k_proj and v_proj rows (and biases), an
MLP channel's gate/up rows (and biases) plus its down_proj column. Squared, so that it adds up over
weights like the other criteria: the allocator sums structures (a KV group with its heads) and
normalizes by size, which is only meaningful for an additive score (a plain L2 norm grows like
sqrt(size), so big structures, heads, looked cheap and went first).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .base import (
    LayerScores,
    Scorer,
    Scores,
    ScoringStats,
    empty_scores,
    prunable_linears,
    register_scorer,
    structure_sums,
)

__all__ = ["MagnitudeScorer"]

logger = logging.getLogger(__name__)


@register_scorer("magnitude")
class MagnitudeScorer(Scorer):
    """Importance = sum of squares over all weights and out-side bias entries of a structure."""

    requires = "weights"

    def score(
        self, model: nn.Module, examples: Sequence[Mapping[str, Sequence[int]]] | None = None
    ) -> Scores:
        """Squared L2 norm of every query head, KV group and channel of every layer (`examples` are ignored)."""
        start = time.perf_counter()
        linears = prunable_linears(model)
        acc = empty_scores(linears)
        with torch.no_grad():
            for lin in linears:
                for _, param in lin.params:
                    acc[lin.layer][lin.structure] += structure_sums(
                        param.float().square(), lin.dim, lin.unit
                    ).cpu()
        scores = [LayerScores(**layer) for layer in acc]
        self.last_stats = ScoringStats(wall_time_s=time.perf_counter() - start)
        logger.info("Magnitude importance of %d layers in %.2f s.", len(scores), self.last_stats.wall_time_s)
        return scores
