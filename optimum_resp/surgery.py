"""Physical structured pruning: given what each layer keeps, build the smaller model.

No masks, hooks or zero rows are left behind: every pruned nn.Linear is a new, smaller tensor, the
config describes the result, and the returned model is an ordinary `PreTrainedModel` that saves
with `save_pretrained` and reloads with `from_pretrained`.

Two export modes:
- ``uniform``: every layer keeps the same counts; the result is a stock Qwen3/Qwen2/Llama model.
- ``per_layer``: sizes differ per layer, stored in transformers' `per_layer_config`; the result is
  one of `optimum_resp.modeling`'s classes (registered with the Auto classes, saved with `auto_map`).
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.initialization import no_init_weights

from .architectures import ArchitectureSpec, LayerSizes, get_architecture, layer_sizes

__all__ = [
    "ExportMode",
    "LayerKeep",
    "PruningPlan",
    "PruningPlanError",
    "prune_model",
    "pruned_config",
    "slice_linear",
    "structure_index",
    "validate_plan",
]

ExportMode = Literal["uniform", "per_layer"]
EXPORT_MODES = typing.get_args(ExportMode)


class PruningPlanError(ValueError):
    """A keep-set that cannot be turned into a correct model; the message names the layer and the fix."""


@dataclass(frozen=True)
class LayerKeep:
    """What one decoder layer keeps: query head, KV group and MLP channel indices (sorted, unique)."""

    query_heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    channels: tuple[int, ...]

    @classmethod
    def full(cls, sizes: LayerSizes) -> LayerKeep:
        return cls(
            tuple(range(sizes.num_attention_heads)),
            tuple(range(sizes.num_key_value_heads)),
            tuple(range(sizes.intermediate_size)),
        )

    @property
    def sizes(self) -> LayerSizes:
        return LayerSizes(len(self.query_heads), len(self.kv_heads), len(self.channels))

    def to_dict(self) -> dict[str, list[int]]:
        return {
            "query_heads": list(self.query_heads),
            "kv_heads": list(self.kv_heads),
            "channels": list(self.channels),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Sequence[int]]) -> LayerKeep:
        return cls(tuple(d["query_heads"]), tuple(d["kv_heads"]), tuple(d["channels"]))


@dataclass(frozen=True)
class PruningPlan:
    """Per-layer keep-sets, indexed against the model they are applied to."""

    layers: tuple[LayerKeep, ...]

    @classmethod
    def full(cls, config: PretrainedConfig) -> PruningPlan:
        """The plan that keeps everything."""
        return cls(tuple(LayerKeep.full(s) for s in layer_sizes(config)))

    @property
    def sizes(self) -> list[LayerSizes]:
        return [keep.sizes for keep in self.layers]

    @property
    def is_uniform(self) -> bool:
        return len(set(self.sizes)) <= 1

    def to_dict(self) -> dict:
        return {"layers": [keep.to_dict() for keep in self.layers]}

    @classmethod
    def from_dict(cls, d: dict) -> PruningPlan:
        return cls(tuple(LayerKeep.from_dict(layer) for layer in d["layers"]))


# --------------------------------------------------------------------------------------------------
# Validation: every error names the layer and says how to fix it, before any tensor is touched.
# --------------------------------------------------------------------------------------------------


def _check_indices(layer: int, name: str, indices: Sequence[int], size: int) -> None:
    bad = [i for i in indices if not isinstance(i, int) or i < 0 or i >= size]
    if bad:
        raise PruningPlanError(
            f"Layer {layer}: {name} indices {bad} are out of range; this layer has {size} {name} "
            f"(valid indices 0..{size - 1})."
        )
    if len(set(indices)) != len(indices):
        dupes = sorted({i for i in indices if list(indices).count(i) > 1})
        raise PruningPlanError(
            f"Layer {layer}: {name} indices {dupes} are listed more than once; list each once."
        )
    if list(indices) != sorted(indices):
        raise PruningPlanError(
            f"Layer {layer}: {name} indices must be sorted ascending; got {list(indices)}."
        )


def validate_plan(plan: PruningPlan, config: PretrainedConfig) -> None:
    """Refuse a plan that would build a wrong or unbuildable model, with the layer and the fix."""
    sizes = layer_sizes(config)
    if len(plan.layers) != len(sizes):
        raise PruningPlanError(
            f"The plan has {len(plan.layers)} layers but the model has {len(sizes)}; give one LayerKeep per layer."
        )
    for i, (keep, size) in enumerate(zip(plan.layers, sizes, strict=True)):
        _check_indices(i, "query_heads", keep.query_heads, size.num_attention_heads)
        _check_indices(i, "kv_heads", keep.kv_heads, size.num_key_value_heads)
        _check_indices(i, "channels", keep.channels, size.intermediate_size)
        if not keep.query_heads or not keep.kv_heads:
            raise PruningPlanError(
                f"Layer {i} would keep no attention heads. A layer without attention cannot be expressed in "
                "a Qwen3/Qwen2/Llama checkpoint: keep at least one KV group and one of its query heads in "
                "this layer (or protect the layer from pruning)."
            )
        if not keep.channels:
            raise PruningPlanError(
                f"Layer {i} would keep no MLP channels. A layer without an MLP cannot be expressed in a "
                "Qwen3/Qwen2/Llama checkpoint: keep at least one channel in this layer (or protect it)."
            )
        per_group = size.heads_per_group
        groups: dict[int, list[int]] = {g: [] for g in keep.kv_heads}
        orphans = []
        for h in keep.query_heads:
            g = h // per_group
            (groups[g] if g in groups else orphans).append(h)
        if orphans:
            raise PruningPlanError(
                f"Layer {i}: query heads {orphans} are kept but their KV groups "
                f"{sorted({h // per_group for h in orphans})} are removed. Remove those query heads too, or "
                "keep their KV groups."
            )
        empty = [g for g, heads in groups.items() if not heads]
        if empty:
            raise PruningPlanError(
                f"Layer {i}: KV groups {empty} are kept with no query head reading them. Remove those KV "
                "groups too (it shrinks the KV cache), or keep at least one of their query heads."
            )
        counts = {g: len(heads) for g, heads in groups.items()}
        if len(set(counts.values())) > 1:
            raise PruningPlanError(
                f"Layer {i}: KV groups keep different numbers of query heads {counts}. Stock attention "
                "(repeat_kv) needs the same number of query heads in every group of a layer, or it would "
                "silently attend with the wrong keys: keep the same number of heads in each kept group, "
                "or remove whole groups."
            )


# --------------------------------------------------------------------------------------------------
# Pure tensor surgery.
# --------------------------------------------------------------------------------------------------


def structure_index(kept: Sequence[int], unit: int, device: torch.device | None = None) -> torch.Tensor:
    """Row/column indices of the kept structures, each `unit` wide (head_dim for heads, 1 for channels)."""
    kept_t = torch.as_tensor(list(kept), dtype=torch.long, device=device)
    return (kept_t[:, None] * unit + torch.arange(unit, device=device)[None, :]).reshape(-1)


def slice_linear(
    linear: nn.Linear, out_index: torch.Tensor | None = None, in_index: torch.Tensor | None = None
) -> nn.Linear:
    """A new nn.Linear keeping the given output rows and/or input columns (bias follows the rows)."""
    weight = linear.weight.detach()
    bias = linear.bias.detach() if linear.bias is not None else None
    if out_index is not None:
        weight = weight.index_select(0, out_index.to(weight.device))
        if bias is not None:
            bias = bias.index_select(0, out_index.to(bias.device))
    if in_index is not None:
        weight = weight.index_select(1, in_index.to(weight.device))
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    new.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias, requires_grad=linear.bias.requires_grad)
    return new


def _layer_indices(spec: ArchitectureSpec, keep: LayerKeep, head_dim: int) -> dict[str, torch.Tensor]:
    """Index tensors per structure kind, in weight units."""
    return {
        "query_heads": structure_index(keep.query_heads, head_dim),
        "kv_heads": structure_index(keep.kv_heads, head_dim),
        "channels": structure_index(keep.channels, 1),
    }


def pruned_config(config: PretrainedConfig, plan: PruningPlan, export: ExportMode) -> PretrainedConfig:
    """The config describing the pruned model (stock class for uniform, per-layer class otherwise)."""
    if export not in EXPORT_MODES:
        raise ValueError(f"export must be one of {EXPORT_MODES}; got {export!r}.")
    spec = get_architecture(config)
    sizes = plan.sizes
    base = config.to_dict()  # per-layer attributes keep their global (dense) values here
    base.pop("per_layer_config", None)
    for key in ("model_type", "auto_map", "architectures", "transformers_version"):
        base.pop(key, None)
    base["head_dim"] = spec.head_dim(config)
    if export == "uniform":
        if not plan.is_uniform:
            distinct = sorted(
                {(s.num_attention_heads, s.num_key_value_heads, s.intermediate_size) for s in sizes}
            )
            raise PruningPlanError(
                "uniform export needs the same (heads, KV heads, channels) in every layer, but this plan has "
                f"{distinct}. Use export='per_layer', or allocate uniformly across layers."
            )
        base.update(sizes[0].to_dict())
        try:
            new = spec.config_class.from_dict(base)
        except (
            ValueError,
            StrictDataclassClassValidationError,
        ) as err:  # the stock config's own validation (e.g. Llama: hidden % heads == 0)
            raise PruningPlanError(
                f"uniform export: the stock {spec.config_class.__name__} refuses these sizes ({sizes[0]}): "
                f"{err.__cause__ or err} Keep a head count it accepts, or use export='per_layer'."
            ) from err
        new.architectures = [spec.causal_lm_class.__name__]
    else:
        base["per_layer_config"] = {i: s.to_dict() for i, s in enumerate(sizes)}
        new = spec.per_layer_config_class.from_dict(base)
        new.architectures = [spec.per_layer_causal_lm_class.__name__]
    new._name_or_path = config._name_or_path
    return new


def _model_class(spec: ArchitectureSpec, export: ExportMode) -> type[PreTrainedModel]:
    return spec.causal_lm_class if export == "uniform" else spec.per_layer_causal_lm_class


def prune_model(
    model: PreTrainedModel, plan: PruningPlan, export: ExportMode = "per_layer"
) -> PreTrainedModel:
    """Build the physically pruned model; `model` itself is left unchanged.

    The plan's indices refer to `model`'s current structures. Pruned linears are new tensors on the
    model's device and in its dtype; modules the plan does not touch (embeddings, norms, lm_head) share
    their tensors with `model` (copy `model` first if both will be trained).
    """
    spec = get_architecture(model)
    validate_plan(plan, model.config)
    new_config = pruned_config(model.config, plan, export)
    new_config._attn_implementation = model.config._attn_implementation
    head_dim = spec.head_dim(model.config)

    with no_init_weights(), torch.device("meta"):
        new_model = _model_class(spec, export)(new_config)

    old_layers = model.get_submodule(spec.layers_path)
    new_layers = new_model.get_submodule(spec.layers_path)
    for i, (keep, old_layer, new_layer) in enumerate(zip(plan.layers, old_layers, new_layers, strict=True)):
        index = _layer_indices(spec, keep, head_dim)
        for kind, slices in spec.structures.items():
            for s in slices:
                old_linear = old_layer.get_submodule(s.module)
                if old_linear.bias is not None and new_layer.get_submodule(s.module).bias is None:
                    # e.g. a FLAP bias-compensated o_proj/down_proj: the stock class would drop it on reload
                    raise PruningPlanError(
                        f"Layer {i} {s.module} has a bias that a {type(new_model).__name__} cannot hold "
                        "(added by bias compensation?). Use export='per_layer'."
                    )
                new_linear = slice_linear(
                    old_linear,
                    out_index=index[kind] if s.dim == "out" else None,
                    in_index=index[kind] if s.dim == "in" else None,
                )
                parent, _, name = s.module.rpartition(".")
                setattr(new_layer.get_submodule(parent), name, new_linear)

    # Everything else (embeddings, norms, q/k norms, lm_head, rotary buffers) is shared, not copied:
    # `model` is usually discarded, and an 8B model's embeddings alone are over a gigabyte.
    new_state = new_model.state_dict(keep_vars=True)
    untouched = {k: v for k, v in model.state_dict().items() if k in new_state and new_state[k].is_meta}
    new_model.load_state_dict(untouched, strict=False, assign=True)
    new_buffers = dict(new_model.named_buffers())
    for name, buf in model.named_buffers():  # non-persistent buffers (rotary inv_freq) are not in state_dict
        if name in new_buffers and new_buffers[name].is_meta:
            parent, _, attr = name.rpartition(".")
            setattr(new_model.get_submodule(parent), attr, buf)
    # Parameters that are one tensor in `model` (tied lm_head and embeddings) are one Parameter here too;
    # nothing is tied that was not (no tie_weights()).
    first_by_storage: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owner = first_by_storage.setdefault(param.data_ptr(), name)
        if owner != name:
            parent, _, attr = name.rpartition(".")
            setattr(new_model.get_submodule(parent), attr, new_model.get_parameter(owner))

    leftover = [n for n, t in [*new_model.named_parameters(), *new_model.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"Surgery left tensors unset: {leftover[:5]} (a bug in optimum_resp).")
    new_model.generation_config = copy.deepcopy(model.generation_config)
    new_model.train(model.training)
    return new_model
