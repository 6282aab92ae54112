"""FLAP: fluctuation-based importance and bias compensation (An et al., 2024).

Importance ("WIFV", weighted input feature variance): input feature j of o_proj / down_proj scores
Var(X_j) * ||W[:, j]||_2^2, the sample variance of the feature over the calibration tokens times the
squared norm of the weight column it feeds; a query head sums its head_dim features, an MLP channel
is one feature. FLAP has no separate criterion for k/v: a KV group scores the sum of its query heads'
scores, so the allocator can still remove whole groups. With `standardize=True` the scores of each
kind are z-scored across all layers, as FLAP does before its global ranking (use the allocator's
`normalization="none"` with it); by default raw sums are returned and the allocator normalises.

Bias compensation: a removed input feature is replaced by its calibration mean, so the layer's
expected output is unchanged: after `prune_model`, `compensate_bias` adds W[:, removed] @ mean(X[removed])
to the o_proj / down_proj bias. Stock Qwen3/Qwen2 have no bias there: a per_layer model gets one
through the `o_proj_bias` / `down_proj_bias` config flags its classes read (so it saves and reloads,
trust_remote_code included); a uniform (stock) export is only possible where the architecture has
those biases natively (Llama with `attention_bias` and `mlp_bias`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from ..architectures import get_architecture
from ..modeling.modeling_resp import DOWN_PROJ_BIAS, O_PROJ_BIAS
from ..surgery import PruningPlan, PruningPlanError, structure_index
from .activations import POSITIONS, Positions, collect_input_stats
from .base import LayerScores, Scorer, Scores, prunable_linears, register_scorer

__all__ = ["FLAPScorer", "FeatureMeans", "check_bias_compensation", "compensate_bias"]

logger = logging.getLogger(__name__)

# Per layer: {module path (spec.o_proj / spec.down_proj): mean of each input feature}.
FeatureMeans = list[dict[str, torch.Tensor]]


def _compensated(spec) -> tuple[tuple[str, str, str], ...]:
    """(module path, structure kind, config flag) of the linears whose bias absorbs removed inputs."""
    return ((spec.o_proj, "query_heads", O_PROJ_BIAS), (spec.down_proj, "channels", DOWN_PROJ_BIAS))


def check_bias_compensation(config: PretrainedConfig, export: str) -> None:
    """Refuse, before any work, an export whose model class cannot hold the compensation biases."""
    if export != "uniform":
        return
    spec = get_architecture(config)
    biases = spec.biases(config)
    missing = [name for name, has in (("o_proj", biases.o), ("down_proj", biases.mlp)) if not has]
    if missing:
        raise ValueError(
            f"FLAP bias compensation needs a bias on {' and '.join(missing)}, which a stock "
            f"{spec.causal_lm_class.__name__} of this config does not have, so export='uniform' cannot hold it. "
            "Use export='per_layer' (its model classes add those biases), or switch bias compensation off."
        )


def compensate_bias(
    model: nn.Module, pruned_model: PreTrainedModel, plan: PruningPlan, means: FeatureMeans
) -> PreTrainedModel:
    """Add W[:, removed] @ mean(X[removed]) to the o_proj / down_proj biases of `pruned_model`, in place.

    `model` is the model `plan` was applied to (its weights hold the removed columns) and
    `pruned_model = prune_model(model, plan, export)`; `means` are `model`'s input-feature means
    (`FLAPScorer.feature_means`). A per_layer `pruned_model` without those biases gets them (zero,
    in every layer, with the config flag set so it saves and reloads); a stock class without them is
    refused. Returns `pruned_model`.
    """
    spec = get_architecture(model)
    head_dim = spec.head_dim(model.config)
    old_layers = model.get_submodule(spec.layers_path)
    new_layers = pruned_model.get_submodule(spec.layers_path)
    if not len(plan.layers) == len(old_layers) == len(new_layers) == len(means):
        raise ValueError(
            f"compensate_bias got {len(plan.layers)} plan layers, {len(old_layers)} model layers, "
            f"{len(new_layers)} pruned layers and {len(means)} layers of means; they must match."
        )
    deltas: dict[tuple[int, str], torch.Tensor] = {}
    with torch.no_grad():
        for i, (keep, old_layer) in enumerate(zip(plan.layers, old_layers)):
            for path, kind, _ in _compensated(spec):
                old = old_layer.get_submodule(path)
                kept = structure_index(getattr(keep, kind), head_dim if kind == "query_heads" else 1)
                removed = torch.ones(old.in_features, dtype=torch.bool)
                removed[kept] = False
                if not removed.any():
                    continue
                if path not in means[i]:
                    raise KeyError(
                        f"No input means for layer {i} {path}; score the model with FLAPScorer first."
                    )
                mean = means[i][path].to(torch.float64)
                if mean.shape != (old.in_features,):
                    raise ValueError(
                        f"Layer {i} {path}: means have shape {tuple(mean.shape)} but the linear has "
                        f"{old.in_features} inputs; measure them on the model the plan was applied to."
                    )
                removed_w = old.weight.detach()[:, removed.to(old.weight.device)].to(torch.float64)
                deltas[(i, path)] = removed_w @ mean[removed].to(removed_w.device)

        missing = sorted({path for (i, path) in deltas if new_layers[i].get_submodule(path).bias is None})
        if missing:
            if pruned_model.config.model_type != spec.per_layer_model_type:
                raise PruningPlanError(
                    f"Bias compensation needs a bias on {', '.join(missing)}, which the stock "
                    f"{type(pruned_model).__name__} does not have. Prune with export='per_layer'."
                )
            flags = {path: flag for path, _, flag in _compensated(spec)}
            for path in missing:  # every layer, as the per_layer classes build them from the flag
                setattr(pruned_model.config, flags[path], True)
                for layer in new_layers:
                    linear = layer.get_submodule(path)
                    if linear.bias is None:
                        w = linear.weight
                        linear.bias = nn.Parameter(
                            torch.zeros(w.shape[0], dtype=w.dtype, device=w.device),
                            requires_grad=w.requires_grad,
                        )
        for (i, path), delta in deltas.items():
            linear = new_layers[i].get_submodule(path)
            bias = linear.bias
            # A new tensor: prune_model shares in-side biases with `model`, which must stay unchanged.
            new_bias = (bias.detach().to(torch.float64) + delta.to(bias.device)).to(bias.dtype)
            linear.bias = nn.Parameter(new_bias, requires_grad=bias.requires_grad)
    logger.info("Bias compensation applied to %d linear(s).", len(deltas))
    return pruned_model


@register_scorer("flap")
class FLAPScorer(Scorer):
    """FLAP's fluctuation metric Var(X_j) * ||W[:, j]||^2 per head (o_proj) and channel (down_proj).

    KV groups score the sum of their query heads. After `score`, `feature_means` holds each
    layer's o_proj / down_proj input means for `compensate` (bias compensation after pruning).
    `positions`: "labelled" (decode tokens) or "all"; `batch_size`: examples per forward pass.
    """

    requires = "activations"

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

    def score(
        self, model: nn.Module, examples: Sequence[Mapping[str, Sequence[int]]] | None = None, **kwargs: Any
    ) -> Scores:
        """WIFV importance of every query head, KV group and channel, from one pass over `examples`."""
        if kwargs:
            raise TypeError(f"Unexpected arguments for FLAPScorer.score: {sorted(kwargs)}.")
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

    def compensate(
        self, model: nn.Module, pruned_model: PreTrainedModel, plan: PruningPlan
    ) -> PreTrainedModel:
        """Bias compensation with the means of the last `score` (no-op when `bias_compensation` is off)."""
        if not self.bias_compensation:
            return pruned_model
        if self.feature_means is None:
            raise RuntimeError("FLAPScorer.compensate needs the means of a score() run on `model` first.")
        return compensate_bias(model, pruned_model, plan, self.feature_means)
