"""FLAP: fluctuation-based importance and bias compensation (An et al., 2024).

Importance ("WIFV", weighted input feature variance): input feature j of o_proj / down_proj scores
Var(X_j) * ||W[:, j]||_2^2, the sample variance of the feature over the calibration tokens times the
squared norm of the weight column it feeds; a query head sums its head_dim features, an MLP channel
is one feature. FLAP has no separate criterion for k/v: a KV group scores the sum of its query heads'
scores, so the allocator can still remove whole groups. With `standardize=True` the scores of each
kind are z-scored across all layers, as FLAP does before its global ranking (use the allocator's
`normalization="none"` with it); by default raw sums are returned and the allocator normalises.

Bias compensation (`after_surgery`): a removed input feature is replaced by its calibration mean, so
the layer's expected output is unchanged (`optimum_resp.compensation`, which also says where the
added biases live and when a uniform export can hold them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from ..architectures import get_architecture
from ..compensation import FeatureMeans, check_bias_compensation, compensate_bias
from .activations import POSITIONS, ActivationScoringConfig, Positions, collect_input_stats
from .base import LayerScores, Scorer, Scores, prunable_linears, register_scorer

if TYPE_CHECKING:
    from ..runtimes import ExportConfig
    from ..surgery import PruningPlan

__all__ = ["FLAPScorer"]

logger = logging.getLogger(__name__)


@register_scorer("flap")
class FLAPScorer(Scorer):
    """FLAP's fluctuation metric Var(X_j) * ||W[:, j]||^2 per head (o_proj) and channel (down_proj).

    KV groups score the sum of their query heads. After `score`, `feature_means` holds each
    layer's o_proj / down_proj input means for `compensate` (bias compensation after pruning).
    `positions`: "labelled" (decode tokens) or "all"; `batch_size`: examples per forward pass.
    """

    requires = "activations"
    config_class = ActivationScoringConfig

    def __init__(
        self,
        positions: Positions = "labelled",
        batch_size: int = 1,
        standardize: bool = False,
        bias_compensation: bool = True,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}; got {positions!r}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}.")
        self.positions = positions
        self.batch_size = batch_size
        self.standardize = standardize
        self.bias_compensation = bias_compensation
        self.progress = progress
        self.feature_means: FeatureMeans | None = None

    @classmethod
    def from_config(cls, config: ActivationScoringConfig, seed: int = 0) -> FLAPScorer:
        return cls(batch_size=config.batch_size)

    def score(
        self, model: nn.Module, examples: Sequence[Mapping[str, Sequence[int]]] | None = None
    ) -> Scores:
        """WIFV importance of every query head, KV group and channel, from one pass over `examples`."""
        spec = get_architecture(model)
        paths = {spec.o_proj: "query_heads", spec.down_proj: "channels"}
        all_linears = prunable_linears(model)
        linears = [lin for lin in all_linears if lin.module_path in paths and lin.dim == "in"]
        stats, run = collect_input_stats(
            model, examples, linears, self.positions, self.batch_size, self.progress
        )
        num_layers = max(lin.layer for lin in all_linears) + 1
        raw: list[dict[str, torch.Tensor]] = [{} for _ in range(num_layers)]
        means: FeatureMeans = [{} for _ in range(num_layers)]
        kv_counts = {lin.layer: lin.count for lin in all_linears if lin.structure == "kv_heads"}
        with torch.no_grad():
            for lin in linears:
                s = stats[(lin.layer, lin.module_path)]
                column_sq = lin.module.weight.detach().float().square().sum(dim=0).double().cpu()
                wifv = s.variance * column_sq
                raw[lin.layer][paths[lin.module_path]] = wifv.view(-1, lin.unit).sum(dim=1)
                means[lin.layer][lin.module_path] = s.mean.clone()
        if self.standardize:
            for kind in ("query_heads", "channels"):
                flat = torch.cat([layer[kind] for layer in raw])
                mu, sigma = flat.mean(), flat.std()
                for layer in raw:
                    layer[kind] = (layer[kind] - mu) / (sigma if sigma > 0 else 1.0)
        scores = []
        for i, layer in enumerate(raw):
            heads = layer["query_heads"]
            kv = heads.view(kv_counts[i], -1).sum(dim=1)  # a group's heads are contiguous
            scores.append(LayerScores(query_heads=heads, kv_heads=kv, channels=layer["channels"]))
        self.feature_means = means
        self.last_stats = run
        return scores

    def check(self, model_config: PretrainedConfig, export: ExportConfig) -> None:
        """The export must be able to hold the compensation biases."""
        if self.bias_compensation:
            check_bias_compensation(model_config, export.mode, export.runtimes)

    def after_surgery(self, model: nn.Module, pruned: PreTrainedModel, plan: PruningPlan) -> PreTrainedModel:
        """Bias compensation with the means of the last `score` (nothing when `bias_compensation` is off)."""
        if not self.bias_compensation:
            return pruned
        if self.feature_means is None:
            raise RuntimeError("FLAPScorer.after_surgery needs the means of a score() run on `model` first.")
        return compensate_bias(model, pruned, plan, self.feature_means)
