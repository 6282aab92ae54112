"""Bias compensation: fold what removed inputs contributed on average into the bias of the linear they fed.

After surgery, a removed input feature j of a linear (o_proj's head columns, down_proj's channel column)
is replaced by its calibration mean, so the layer's expected output is unchanged: the bias gains
W[:, removed] @ mean(X[removed]) (FLAP, An et al., 2024). Stock Qwen3/Qwen2 have no bias there: a
per_layer model gets one through the config flags its classes read (`ArchitectureSpec.added_bias_flags`),
so it saves, reloads (trust_remote_code included) and resumes with it; a uniform (stock) export can hold
it only where the architecture has those biases natively (Llama with `attention_bias` and `mlp_bias`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from .architectures import get_architecture
from .runtimes import export_target
from .surgery import PruningPlan, PruningPlanError, structure_index

__all__ = ["FeatureMeans", "add_biases", "check_bias_compensation", "compensate_bias"]

logger = logging.getLogger(__name__)

# Per layer: {module path (a key of spec.added_bias_flags): mean of each input feature}.
FeatureMeans = list[dict[str, torch.Tensor]]


def _input_structure(spec, path: str) -> str:
    """The structure kind whose slices are `path`'s input columns (query heads for o_proj, ...)."""
    for kind, slices in spec.structures.items():
        if any(s.module == path and s.dim == "in" for s in slices):
            return kind
    raise ValueError(f"{path} is no structure's input side in {spec.model_type}.")


def check_bias_compensation(config: PretrainedConfig, export: str, runtimes: Sequence[str] = ()) -> None:
    """Refuse, before any work, an export whose model class (or one of `runtimes`) cannot hold the compensation
    biases."""
    if export != "uniform":
        model_type = get_architecture(config).model_type
        refusals = export_target(export, runtimes, model_type, traits={"biases"}).refusals
        if refusals:
            raise ValueError(f"FLAP bias compensation adds biases, and {refusals[0]}")
        return
    spec = get_architecture(config)
    missing = [path.rsplit(".", 1)[-1] for path, has in spec.native_biases(config).items() if not has]
    if missing:
        raise ValueError(
            f"FLAP bias compensation needs a bias on {' and '.join(missing)}, which a stock "
            f"{spec.causal_lm_class.__name__} of this config does not have, so export='uniform' cannot hold it. "
            "Use export='per_layer' (its model classes add those biases), or switch bias compensation off."
        )


def _give_bias(model: PreTrainedModel, path: str) -> None:
    """A zero bias on `path` in every layer that lacks one, and the config flag that builds it on reload."""
    spec = get_architecture(model)
    if model.config.model_type != spec.per_layer_model_type:
        raise PruningPlanError(
            f"Bias compensation needs a bias on {path}, which the stock {type(model).__name__} does not "
            "have. Prune with export='per_layer'."
        )
    setattr(model.config, spec.added_bias_flags[path], True)
    for layer in model.get_submodule(spec.layers_path):  # every layer, as the per_layer classes build them
        linear = layer.get_submodule(path)
        if linear.bias is None:
            w = linear.weight
            linear.bias = nn.Parameter(
                torch.zeros(w.shape[0], dtype=w.dtype, device=w.device), requires_grad=w.requires_grad
            )


def add_biases(model: PreTrainedModel, biases: Mapping[str, torch.Tensor]) -> PreTrainedModel:
    """Put back biases (state-dict names -> tensors) that compensation added to linears the stock layer
    lacks, e.g. when a run resumes from a checkpoint: the keep-sets alone cannot rebuild them."""
    spec = get_architecture(model)
    for name, tensor in biases.items():
        module_name = name.removesuffix(".bias")
        path = next((p for p in spec.added_bias_flags if module_name.endswith("." + p)), None)
        if path is None:
            raise ValueError(
                f"Cannot restore an added bias on {module_name}: only {sorted(spec.added_bias_flags)} can carry one."
            )
        _give_bias(model, path)
        linear = model.get_submodule(module_name)
        linear.bias = nn.Parameter(tensor.to(linear.weight.device, linear.weight.dtype))
    return model


def compensate_bias(
    model: nn.Module, pruned_model: PreTrainedModel, plan: PruningPlan, means: FeatureMeans
) -> PreTrainedModel:
    """Add W[:, removed] @ mean(X[removed]) to the compensated linears' biases of `pruned_model`, in place.

    `model` is the model `plan` was applied to (its weights hold the removed columns) and
    `pruned_model = prune_model(model, plan, export)`; `means` are `model`'s input-feature means
    (`FLAPScorer.feature_means`). A per_layer `pruned_model` without those biases gets them (zero, in
    every layer, with the config flag set); a stock class without them is refused. Returns `pruned_model`.
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
            for path in spec.added_bias_flags:
                kind = _input_structure(spec, path)
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

        for path in sorted({path for (i, path) in deltas if new_layers[i].get_submodule(path).bias is None}):
            _give_bias(pruned_model, path)
        for (i, path), delta in deltas.items():
            linear = new_layers[i].get_submodule(path)
            bias = linear.bias
            # A new tensor: prune_model shares in-side biases with `model`, which must stay unchanged.
            new_bias = (bias.detach().to(torch.float64) + delta.to(bias.device)).to(bias.dtype)
            linear.bias = nn.Parameter(new_bias, requires_grad=bias.requires_grad)
    logger.info("Bias compensation applied to %d linear(s).", len(deltas))
    return pruned_model
