"""Wanda-sp: structured Wanda, importance = sum over a structure's weights of |W_ij| * ||X_j||_2.

X_j is input feature j of the linear holding the weight, over the calibration tokens (decode tokens
only by default, see `activations.collect_input_stats`). For out-side slices (q/k/v, gate/up rows)
the inputs are the layer's normalised hidden states; for in-side slices (o_proj, down_proj columns)
each column's input is the structure's own output (the head's attention output, the channel's
activation). Only weights are scored, as in the paper: bias entries have no input feature.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .activations import POSITIONS, ActivationScoringConfig, Positions, collect_input_stats
from .base import LayerScores, Scorer, Scores, empty_scores, prunable_linears, register_scorer, structure_sums

__all__ = ["WandaSPScorer"]

logger = logging.getLogger(__name__)


@register_scorer("wanda-sp")
class WandaSPScorer(Scorer):
    """Structured Wanda (Wanda-sp): per structure, sum of |W| times the L2 norm of each weight's input feature.

    `positions`: "labelled" (decode tokens of decode-only examples) or "all" (every non-padding
    token); `batch_size`: examples per forward pass.
    """

    requires = "activations"
    config_class = ActivationScoringConfig

    def __init__(self, positions: Positions = "labelled", batch_size: int = 1, progress: bool = True) -> None:
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}; got {positions!r}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}.")
        self.positions = positions
        self.batch_size = batch_size
        self.progress = progress

    @classmethod
    def from_config(cls, config: ActivationScoringConfig, seed: int = 0) -> WandaSPScorer:
        return cls(batch_size=config.batch_size)

    def score(
        self, model: nn.Module, examples: Sequence[Mapping[str, Sequence[int]]] | None = None
    ) -> Scores:
        """Wanda-sp importance of every query head, KV group and channel, from one pass over `examples`."""
        linears = prunable_linears(model)
        stats, run = collect_input_stats(
            model, examples, linears, self.positions, self.batch_size, self.progress
        )
        acc = empty_scores(linears)
        with torch.no_grad():
            for lin in linears:
                weight = lin.module.weight
                norm = stats[(lin.layer, lin.module_path)].norm.to(device=weight.device, dtype=torch.float32)
                acc[lin.layer][lin.structure] += structure_sums(weight.abs() * norm, lin.dim, lin.unit).cpu()
        self.last_stats = run
        return [LayerScores(**layer) for layer in acc]
