"""Importance scores per prunable structure, the scorer interface, and the scorer registry.

A scorer turns a model (and, for data-driven criteria, calibration examples) into one
`LayerScores` per decoder layer: one number per query head, KV group and MLP channel. Scores are
raw sums over each structure's weights; normalising by block size is the allocator's job. Criteria
differ in what they need (`Scorer.requires`): "weights" (magnitude), "activations" (forward passes:
Wanda-sp, FLAP) or "gradients" (Taylor); the shared helpers here map weight-shaped tensors onto
structures so every criterion sums over exactly the same slices the surgery removes.
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from ..architectures import STRUCTURES, get_architecture, layer_sizes
from ..config_mixin import ConfigMixin
from ..registry import Registry

if TYPE_CHECKING:
    from ..memory import ScoringMemoryEstimate
    from ..runtimes import ExportConfig
    from ..surgery import PruningPlan

__all__ = [
    "SCORERS",
    "LayerScores",
    "PrunableLinear",
    "Scorer",
    "Scores",
    "ScoringConfig",
    "ScoringStats",
    "empty_scores",
    "get_scorer",
    "load_scores",
    "prunable_linears",
    "register_scorer",
    "save_scores",
    "scorer_class",
    "structure_sums",
]


def _as_scores(values: Any) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64).detach().to("cpu").reshape(-1).clone()


@dataclass
class LayerScores:
    """Importance of every structure of one decoder layer (float64 on CPU, one entry per structure)."""

    query_heads: torch.Tensor
    kv_heads: torch.Tensor
    channels: torch.Tensor

    def __post_init__(self) -> None:
        self.query_heads = _as_scores(self.query_heads)
        self.kv_heads = _as_scores(self.kv_heads)
        self.channels = _as_scores(self.channels)

    def __getitem__(self, structure: str) -> torch.Tensor:
        if structure not in STRUCTURES:
            raise KeyError(f"Unknown structure {structure!r}; expected one of {STRUCTURES}.")
        return getattr(self, structure)

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists, for JSON checkpoints of a long scoring run."""
        return {name: self[name].tolist() for name in STRUCTURES}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[float]]) -> LayerScores:
        """Inverse of `to_dict`."""
        return cls(**{name: d[name] for name in STRUCTURES})


# One LayerScores per decoder layer, in layer order.
Scores = list[LayerScores]


@dataclass
class ScoringStats:
    """What a scoring run processed and cost, for logs and run reports."""

    num_samples: int = 0
    num_tokens: int = 0  # labelled (predicted) tokens: decode tokens for decode-only loss
    num_batches: int = 0
    wall_time_s: float = 0.0
    peak_memory_bytes: int | None = None  # CUDA max allocated; None on CPU
    mean_loss: float | None = None  # mean over samples of each sample's token-mean loss
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "num_tokens": self.num_tokens,
            "num_batches": self.num_batches,
            "wall_time_s": self.wall_time_s,
            "peak_memory_bytes": self.peak_memory_bytes,
            "mean_loss": self.mean_loss,
            "world_size": self.world_size,
            **self.extra,
        }


def save_scores(scores: Sequence[LayerScores], path: str | os.PathLike, **metadata: Any) -> None:
    """Write scores (and JSON-serialisable metadata such as the scorer name) to a JSON file."""
    payload = {"metadata": metadata, "layers": [layer.to_dict() for layer in scores]}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f)


def load_scores(path: str | os.PathLike) -> Scores:
    """Read scores written by `save_scores`."""
    with open(path, encoding="utf-8") as f:
        payload = json.load(f)
    return [LayerScores.from_dict(layer) for layer in payload["layers"]]


@dataclass(frozen=True)
class PrunableLinear:
    """One linear of one decoder layer, with the structure kind it belongs to and on which side."""

    layer: int
    structure: str  # "query_heads" | "kv_heads" | "channels"
    module_path: str  # relative to the decoder layer, e.g. "self_attn.q_proj"
    dim: Literal["out", "in"]  # "out": rows (and bias entries) belong to structures; "in": columns
    unit: int  # rows/columns per structure: head_dim for heads, 1 for channels
    count: int  # structures of this kind in this layer
    module: nn.Linear

    @property
    def params(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters whose entries belong to the structures: the weight, plus the bias on the out side."""
        params = [("weight", self.module.weight)]
        if self.dim == "out" and self.module.bias is not None:
            params.append(("bias", self.module.bias))
        return params


def prunable_linears(model: nn.Module) -> list[PrunableLinear]:
    """Every prunable linear of every decoder layer, with sizes read per layer (heterogeneous models too)."""
    spec = get_architecture(model)
    config = model.config
    head_dim = spec.head_dim(config)
    layers = model.get_submodule(spec.layers_path)
    sizes = layer_sizes(config)
    if len(sizes) != len(layers):
        raise ValueError(f"The config describes {len(sizes)} layers but the model has {len(layers)}.")
    out: list[PrunableLinear] = []
    for i, layer in enumerate(layers):
        for structure, slices in spec.structures.items():
            unit = 1 if structure == "channels" else head_dim
            count = sizes[i].count(structure)
            for piece in slices:
                module = layer.get_submodule(piece.module)
                width = module.weight.shape[0 if piece.dim == "out" else 1]
                if width != count * unit:
                    raise ValueError(
                        f"Layer {i} {piece.module}: weight has {width} {'rows' if piece.dim == 'out' else 'columns'}"
                        f" but the config says {count} {structure} x {unit}. The model and its config disagree."
                    )
                out.append(PrunableLinear(i, structure, piece.module, piece.dim, unit, count, module))
    return out


def structure_sums(values: torch.Tensor, dim: Literal["out", "in"], unit: int) -> torch.Tensor:
    """Sum a weight-shaped ([out, in]) or bias-shaped ([out]) tensor per structure, in float64.

    "out": structure s owns rows [s*unit, (s+1)*unit); "in": columns. Row/column sums run in float32
    (cheap for big weights), the per-structure sums in float64.
    """
    values = values.float()
    if values.dim() == 1:
        if dim == "in":
            raise ValueError("A bias only belongs to structures on the output side.")
        per_index = values
    else:
        per_index = values.sum(dim=1 if dim == "out" else 0)
    return per_index.double().view(-1, unit).sum(dim=1)


def empty_scores(
    linears: Sequence[PrunableLinear], device: torch.device | str = "cpu"
) -> list[dict[str, torch.Tensor]]:
    """Zero float64 accumulators per layer and structure kind, sized from `prunable_linears`."""
    num_layers = max((lin.layer for lin in linears), default=-1) + 1
    acc: list[dict[str, torch.Tensor]] = [{} for _ in range(num_layers)]
    for lin in linears:
        acc[lin.layer].setdefault(lin.structure, torch.zeros(lin.count, dtype=torch.float64, device=device))
    return acc


@dataclass
class ScoringConfig(ConfigMixin):
    """A criterion's own settings (`RESPConfig.scoring`): each scorer names its subclass as `Scorer.config_class`.

    This base has none (magnitude needs none); `TaylorConfig` and `ActivationScoringConfig` add theirs."""


class Scorer(abc.ABC):
    """Base class of importance criteria: `score(model, examples)` returns one LayerScores per layer.

    The pruner drives every criterion through the same steps, so adding one is a subclass and a
    `register_scorer` line, never a branch in the pruner:
    - `from_config(config, seed)`: the scorer its section (`config_class`, `RESPConfig.scoring`) describes;
    - `check(model_config, export)`: refuse, before any work, a recipe this criterion cannot serve;
    - `prepare(model, longest_sequence, reserve_bytes)`: before any generation, check the resources a scoring
      pass of sequences this long needs and settle the choices left to it (by default nothing);
    - `score(model, examples)`: the importance of every structure; `last_stats` then describes the run;
    - `after_surgery(model, pruned, plan)`: a step on the smaller model (FLAP's bias compensation);
      by default nothing.
    `requires` says what `score` needs: "weights" ignores `examples`, "activations" runs forward passes
    over them, "gradients" forward and backward passes.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[Literal["weights", "activations", "gradients"]] = "weights"
    config_class: ClassVar[type[ScoringConfig]] = ScoringConfig
    """The dataclass of this criterion's settings, the type of `RESPConfig.scoring` when it is chosen."""

    def __init__(self) -> None:
        self.last_stats: ScoringStats | None = None

    @classmethod
    def from_config(cls, config: ScoringConfig, seed: int = 0) -> Scorer:
        """The scorer `config` (an instance of `config_class`) describes (by default one built with no arguments)."""
        return cls()

    def check(self, model_config: PretrainedConfig, export: ExportConfig) -> None:
        """Raise a ValueError, before any work, when this criterion cannot serve this export of this model."""
        return None

    def prepare(
        self, model: nn.Module, longest_sequence: int, reserve_bytes: int = 0
    ) -> ScoringMemoryEstimate | None:
        """Before any generation: refuse a scoring pass over sequences of `longest_sequence` tokens that cannot fit
        beside `reserve_bytes` other phases hold, and settle what was left to it; returns the memory estimate
        (None: nothing to estimate)."""
        return None

    @abc.abstractmethod
    def score(
        self, model: nn.Module, examples: Sequence[Mapping[str, Sequence[int]]] | None = None
    ) -> Scores:
        """Importance of every query head, KV group and channel of every decoder layer of `model`."""

    def after_surgery(self, model: nn.Module, pruned: PreTrainedModel, plan: PruningPlan) -> PreTrainedModel:
        """`pruned` (= prune_model(model, plan)) after this criterion's own step; by default unchanged."""
        return pruned


SCORERS: Registry[type[Scorer]] = Registry(
    "importance criterion",
    hint="Register one with `@optimum_resp.importance.register_scorer(name)`.",
    name_attr="name",
)
"""Criterion name (what configs and the CLI say) -> Scorer class."""

register_scorer = SCORERS.register
"""`@register_scorer("name")`: a Scorer subclass joins `SCORERS` under `name`, which becomes its `name`."""


def scorer_class(name: str) -> type[Scorer]:
    """The registered scorer class of `name`, with a clear error listing the known names."""
    return SCORERS.lookup(name)


def get_scorer(name: str, **kwargs: Any) -> Scorer:
    """Instantiate a registered scorer by name with these constructor arguments."""
    return scorer_class(name)(**kwargs)
