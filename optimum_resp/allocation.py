"""From importance scores to keep-sets: which heads, KV groups and channels each layer keeps.

Pruning proceeds in steps, always taking the step with the lowest normalized importance next, until
the requested number of decoder-linear parameters is removed:
- a channel step removes the weakest remaining MLP channel of a layer;
- a head step removes the weakest remaining query head of *every* kept KV group of a layer at once,
  so all groups keep the same number of heads (what stock `repeat_kv` attention needs);
- a group step removes the KV group whose k/v rows plus remaining query heads score lowest (this
  also shrinks the KV cache).
`global` allocation ranks steps across all layers (per-layer sizes come out non-uniform, as in RESP);
`uniform` applies each kind of step to every layer together, so all layers keep the same counts.
Protected layers are never pruned; every layer keeps at least one KV group, one head and one channel.
With `channel_multiple=m`, a channel step removes the weakest channels down to the next multiple of
m, so MLP widths stay multiples of m (tensor-core and SIMD friendly shapes).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from transformers import PretrainedConfig

from .architectures import STRUCTURES, ArchitectureSpec, get_architecture, layer_sizes
from .importance.base import LayerScores
from .runtimes import ExportConfig
from .surgery import LayerKeep, PruningPlan

__all__ = ["Allocation", "Normalization", "allocate", "max_removable_params"]

Allocation = Literal["global", "uniform"]
Normalization = Literal["resp", "params", "none"]


def _min_channels(width: int, multiple: int) -> int:
    """The narrowest MLP that channel steps of `multiple` can reach from `width` (never zero)."""
    return multiple if width >= multiple else width


def max_removable_params(
    config: PretrainedConfig,
    protected: Iterable[int] = (),
    structures: Sequence[str] = STRUCTURES,
    channel_multiple: int = 1,
) -> int:
    """The most decoder-linear parameters that can go while every layer stays a valid decoder layer."""
    spec = get_architecture(config)
    cost = spec.structure_param_costs(config)
    protected = set(protected)
    total = 0
    for i, size in enumerate(layer_sizes(config)):
        if i in protected:
            continue
        if "channels" in structures:
            keep = _min_channels(size.intermediate_size, channel_multiple)
            total += (size.intermediate_size - keep) * cost["channels"]
        groups_left = 1 if "kv_heads" in structures else size.num_key_value_heads
        heads_per_group = 1 if "query_heads" in structures else size.heads_per_group
        total += (size.num_key_value_heads - groups_left) * (
            cost["kv_heads"] + size.heads_per_group * cost["query_heads"]
        )
        total += groups_left * (size.heads_per_group - heads_per_group) * cost["query_heads"]
    return total


@dataclass
class _Weights:
    """How raw scores become comparable across structure kinds: priority = sum(score * w) / sum(u)."""

    w: dict[str, float]
    u: dict[str, float]


def _weights(
    spec: ArchitectureSpec, config: PretrainedConfig, normalization: Normalization, dense_intermediate: int
) -> _Weights:
    cost = spec.structure_param_costs(config)
    if normalization == "params":  # importance per parameter removed
        return _Weights(w={k: 1.0 for k in cost}, u={k: float(v) for k, v in cost.items()})
    if (
        normalization == "resp"
    ):  # the reference's constants: head / (4 * head_dim * hidden), channel / (3 * I)
        head = 4.0 * spec.head_dim(config) * config.hidden_size
        return _Weights(
            w={"query_heads": 1 / head, "kv_heads": 1 / head, "channels": 1 / (3.0 * dense_intermediate)},
            u={k: 1.0 for k in cost},
        )
    if normalization == "none":
        return _Weights(w={k: 1.0 for k in cost}, u={k: 1.0 for k in cost})
    raise ValueError(f"normalization must be 'resp', 'params' or 'none'; got {normalization!r}.")


class _LayerState:
    """What one layer still keeps, and its next cheapest step of each kind."""

    def __init__(
        self,
        scores: LayerScores,
        per_group: int,
        structures: Sequence[str],
        weights: _Weights,
        cost: dict,
        channel_multiple: int = 1,
    ):
        self.s = {
            k: scores_tensor.double().tolist()
            for k, scores_tensor in (
                ("query_heads", scores.query_heads),
                ("kv_heads", scores.kv_heads),
                ("channels", scores.channels),
            )
        }
        self.per_group = per_group
        self.groups: dict[int, list[int]] = {
            g: sorted(range(g * per_group, (g + 1) * per_group), key=lambda h: self.s["query_heads"][h])
            for g in range(len(self.s["kv_heads"]))
        }
        self.channels = sorted(range(len(self.s["channels"])), key=lambda c: self.s["channels"][c])
        self.next_channel = 0
        self.channel_multiple = channel_multiple
        self.structures, self.weights, self.cost = structures, weights, cost

    def _priority(self, items: list[tuple[str, int]]) -> float:
        num = sum(self.s[k][i] * self.weights.w[k] for k, i in items)
        return num / sum(self.weights.u[k] for k, _ in items)

    def steps(self) -> dict[str, tuple[float, int, object]]:
        """Available steps: kind -> (priority, parameters removed, what to remove)."""
        out = {}
        left = len(self.channels) - self.next_channel
        n = left % self.channel_multiple or self.channel_multiple  # down to the next multiple
        if "channels" in self.structures and left - n >= 1:
            items = [("channels", c) for c in self.channels[self.next_channel : self.next_channel + n]]
            out["channels"] = (self._priority(items), n * self.cost["channels"], n)
        heads_per_group = len(next(iter(self.groups.values())))
        if "query_heads" in self.structures and heads_per_group > 1:
            items = [("query_heads", heads[0]) for heads in self.groups.values()]
            out["query_heads"] = (self._priority(items), len(items) * self.cost["query_heads"], None)
        if "kv_heads" in self.structures and len(self.groups) > 1:
            best = min(
                self.groups,
                key=lambda g: self._priority(
                    [("kv_heads", g)] + [("query_heads", h) for h in self.groups[g]]
                ),
            )
            items = [("kv_heads", best)] + [("query_heads", h) for h in self.groups[best]]
            cost = self.cost["kv_heads"] + heads_per_group * self.cost["query_heads"]
            out["kv_heads"] = (self._priority(items), cost, best)
        return out

    def apply(self, kind: str, what) -> None:
        if kind == "channels":
            self.next_channel += what
        elif kind == "query_heads":
            for heads in self.groups.values():
                heads.pop(0)
        else:
            del self.groups[what]

    def keep(self) -> LayerKeep:
        heads = sorted(h for hs in self.groups.values() for h in hs)
        return LayerKeep(
            tuple(heads), tuple(sorted(self.groups)), tuple(sorted(self.channels[self.next_channel :]))
        )


def allocate(
    config: PretrainedConfig,
    scores: Sequence[LayerScores],
    params_to_remove: int,
    export: ExportConfig,
    structures: Sequence[str] = STRUCTURES,
    normalization: Normalization = "resp",
    dense_intermediate_size: int | None = None,
) -> PruningPlan:
    """Keep-sets removing at least `params_to_remove` decoder-linear parameters from the current model.

    `scores` has one `LayerScores` per layer of `config`'s (possibly already pruned) model; higher
    means more important. `export` gives the allocation (`global` or `uniform`), the protected layers and the
    channel multiple (every pruned layer's MLP width stays a multiple of it; a layer narrower than it is left
    alone). `dense_intermediate_size` fixes the "resp" normalization constant across progressive stages
    (default: the current first layer's intermediate size).
    """
    spec = get_architecture(config)
    sizes = layer_sizes(config)
    if len(scores) != len(sizes):
        raise ValueError(f"Got scores for {len(scores)} layers; the model has {len(sizes)}.")
    for i, (sc, size) in enumerate(zip(scores, sizes)):
        shapes = (len(sc.query_heads), len(sc.kv_heads), len(sc.channels))
        if shapes != (size.num_attention_heads, size.num_key_value_heads, size.intermediate_size):
            raise ValueError(f"Layer {i}: scores have shapes {shapes} but the layer has {size}.")
    unknown = set(structures) - set(STRUCTURES)
    if unknown or not structures:
        raise ValueError(f"structures must be a non-empty subset of {STRUCTURES}; got {list(structures)}.")
    channel_multiple = export.channel_multiple
    protected = set(export.protected_for(len(sizes)))
    limit = max_removable_params(config, protected, structures, channel_multiple)
    if params_to_remove > limit:
        raise ValueError(
            f"Cannot remove {params_to_remove:,} decoder-linear parameters: with protected layers "
            f"{sorted(protected)}, structures {list(structures)} and channel_multiple {channel_multiple}, at "
            f"most {limit:,} can go. Lower the sparsity, protect fewer layers, or prune more structure kinds."
        )
    weights = _weights(spec, config, normalization, dense_intermediate_size or sizes[0].intermediate_size)
    cost = spec.structure_param_costs(config)
    states = [
        _LayerState(sc, size.heads_per_group, structures, weights, cost, channel_multiple)
        for sc, size in zip(scores, sizes)
    ]
    active = [i for i in range(len(states)) if i not in protected]
    removed = 0
    if export.allocation == "global":
        removed = _greedy_global(states, active, params_to_remove)
    else:
        removed = _greedy_uniform(states, active, params_to_remove)
    if removed < params_to_remove:  # max_removable_params guarantees this cannot happen
        raise RuntimeError(f"Allocation removed only {removed} of {params_to_remove} parameters (a bug).")
    return PruningPlan(tuple(s.keep() for s in states))


def _greedy_global(states: list[_LayerState], active: list[int], target: int) -> int:
    heap: list[tuple[float, int, str, int]] = []
    version = {i: 0 for i in active}

    def push(i: int) -> None:
        for kind, (priority, _, _) in states[i].steps().items():
            heapq.heappush(heap, (priority, i, kind, version[i]))

    for i in active:
        push(i)
    removed = 0
    while removed < target and heap:
        _, i, kind, v = heapq.heappop(heap)
        if v != version[i]:
            continue  # stale: the layer changed since this step was priced
        steps = states[i].steps()
        if kind not in steps:
            continue
        _, cost, what = steps[kind]
        states[i].apply(kind, what)
        removed += cost
        version[i] += 1
        push(i)
    return removed


def _greedy_uniform(states: list[_LayerState], active: list[int], target: int) -> int:
    removed = 0
    while removed < target:
        per_layer = [states[i].steps() for i in active]
        kinds = set.intersection(*(set(s) for s in per_layer)) if per_layer else set()
        if not kinds:
            break
        kind = min(kinds, key=lambda k: sum(s[k][0] for s in per_layer) / len(per_layer))
        for i, steps in zip(active, per_layer):
            _, cost, what = steps[kind]
            states[i].apply(kind, what)
            removed += cost
    return removed
