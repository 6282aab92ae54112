"""Where an export runs: which runtimes load which export mode and which structure changes.

A `uniform` export is a stock checkpoint, so it loads wherever the stock class of its architecture
does, unless that runtime's loader fixes a shape the prune changed: llama.cpp's and vLLM's Qwen2
classes build q_proj and o_proj at hidden_size x hidden_size, so a uniform Qwen2 that lost query heads
(or KV groups, which take their query heads with them) does not load there. A `per_layer` export
needs a class that reads sizes per layer: transformers has one (`import optimum_resp`, or the modeling
code saved beside the weights with `trust_remote_code=True`), lm-evaluation-harness loads through
transformers, vLLM has one through optimum-resp's plugin. llama.cpp's converter knows stock architectures
only and its Qwen/Llama graphs take one size for all layers, but two of its graphs build each layer at its
own size: `optimum-resp export-gguf` writes a per_layer Qwen3 as its `openelm` graph (which ties the output
projection to the token embedding and has no biases) and a per_layer Qwen2 or Llama as its `deci` graph
(`optimum_resp.integrations.llama_cpp`).

The facts live as data: per runtime here (`RUNTIMES`, with a `PerLayerRoute` per architecture where a
runtime loads per_layer exports of some architectures or forms only), per architecture on its
`ArchitectureSpec` (`query_width_fixed_in`). The rule that reads them is written once, `export_target`: from the
architecture, the export mode and the runtimes asked for (`ExportConfig`, `RESPConfig.export`) it gives the
allocation the mode needs, the structures the prune must keep, where the export loads and what is refused.
Config validation, the command line, the pruner, the report (model card, `info`, the warning a prune logs
when its uniform export will not load somewhere) and the benchmarks all ask it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from transformers import PretrainedConfig

from .architectures import ARCHITECTURES, ArchitectureSpec, get_architecture
from .config_mixin import ConfigMixin
from .registry import Registry
from .validation import check_choice, check_int

__all__ = [
    "EXPORT_MODES",
    "RUNTIMES",
    "TRAITS",
    "ExportConfig",
    "ExportTarget",
    "PerLayerRoute",
    "Runtime",
    "RuntimeSupport",
    "checkpoint_traits",
    "export_target",
]

EXPORT_MODES = ("uniform", "per_layer")

TRAITS = {
    "untied_embeddings": "untied embeddings (an lm_head of its own)",
    "biases": "biases on attention or MLP linears (the architecture's own, or FLAP's bias compensation)",
}
"""Features of a checkpoint that some runtime's per_layer route cannot take: name -> what it is."""


@dataclass(frozen=True)
class PerLayerRoute:
    """How a runtime loads per_layer exports of one architecture, and the checkpoint traits that route cannot take."""

    how: str
    cannot_take: Mapping[str, str] = field(default_factory=dict)
    """Trait (`TRAITS`) -> why the route cannot take it."""


@dataclass(frozen=True)
class Runtime:
    """A program that runs exported checkpoints, and how it loads each export mode."""

    name: str
    uniform: str
    """How a uniform (stock) export loads there."""
    per_layer: str | None
    """How a per_layer export of any architecture loads there; None when not every architecture's does."""
    per_layer_by_architecture: Mapping[str, PerLayerRoute] = field(default_factory=dict)
    """Stock model type -> how its per_layer exports load, where `per_layer` is None."""
    aliases: tuple[str, ...] = ()

    def per_layer_route(self, model_type: str) -> PerLayerRoute | None:
        """How per_layer exports of `model_type` load here; None when they do not."""
        if self.per_layer is not None:
            return PerLayerRoute(self.per_layer)
        return self.per_layer_by_architecture.get(ARCHITECTURES.lookup(model_type).model_type)


RUNTIMES: Registry[Runtime] = Registry(
    "runtime",
    hint="Runtimes are described in optimum_resp/runtimes.py.",
    normalize=lambda name: re.sub(r"[^a-z0-9]", "", name.lower()),  # llama.cpp, llamacpp, vLLM, lm_eval...
)
"""Runtime name -> what it loads, in the order the model card lists them."""

for _runtime in (
    Runtime(
        "transformers",
        uniform="`AutoModelForCausalLM.from_pretrained(dir)`, no extra package",
        per_layer="`AutoModelForCausalLM.from_pretrained(dir)` after `import optimum_resp`, or with "
        "`trust_remote_code=True` without it (the modeling code is saved beside the weights)",
    ),
    Runtime(
        "lm-evaluation-harness",
        uniform="`lm_eval --model hf --model_args pretrained=DIR`",
        per_layer="`lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True`",
        aliases=("lm-eval",),
    ),
    Runtime(
        "vllm",
        uniform="`vllm serve DIR`",
        per_layer="`vllm serve DIR` with optimum-resp installed beside vLLM (its plugin registers the "
        "per_layer classes)",
    ),
    Runtime(
        "llama.cpp",
        uniform="llama.cpp's `convert_hf_to_gguf.py DIR`, then any llama.cpp runtime",
        per_layer=None,
        per_layer_by_architecture={
            "qwen3": PerLayerRoute(
                "`optimum-resp export-gguf DIR --outfile model.gguf` (a GGUF of llama.cpp's `openelm` graph, which "
                "builds each layer at its own size), then any llama.cpp runtime",
                cannot_take={
                    "untied_embeddings": "llama.cpp's `openelm` graph, the one that takes a per_layer Qwen3, always "
                    "uses the token embedding as its output projection, and this checkpoint's lm_head is a weight of "
                    "its own: prune with `export='uniform'` (CLI `--export uniform`) for llama.cpp's own converter",
                    "biases": "llama.cpp's `openelm` graph, the one that takes a per_layer Qwen3, has no biases: prune "
                    "without bias compensation (a method other than flap), or, for a Qwen3 with attention_bias, with "
                    "`export='uniform'` (CLI `--export uniform`)",
                },
            ),
            **{
                model_type: PerLayerRoute(
                    "`optimum-resp export-gguf DIR --outfile model.gguf` (a GGUF of llama.cpp's `deci` graph, which "
                    "builds each layer at its own size), then any llama.cpp runtime"
                )
                for model_type in ("qwen2", "llama")
            },
        },
    ),
):
    RUNTIMES.register(_runtime.name, _runtime, aliases=_runtime.aliases)
del _runtime


@dataclass(frozen=True)
class RuntimeSupport:
    """Whether one runtime loads one exported checkpoint, and how (or why not and what to do)."""

    runtime: str
    loads: bool
    how: str


def checkpoint_traits(config: PretrainedConfig) -> frozenset[str]:
    """The `TRAITS` of a (pruned or dense) model's config: untied embeddings, biases on its linears."""
    spec = get_architecture(config)
    traits = set()
    if not getattr(config, "tie_word_embeddings", False):
        traits.add("untied_embeddings")
    own = spec.biases(config)
    added = any(
        getattr(c, flag, False)
        for c in (config, *config.per_layer_config)
        for flag in spec.added_bias_flags.values()
    )
    if own.qkv or own.o or own.mlp or added:
        traits.add("biases")
    return frozenset(traits)


def _per_layer_support(
    runtime: Runtime, spec: ArchitectureSpec, traits: Collection[str] | None
) -> RuntimeSupport:
    """Whether a per_layer export of `spec` with `traits` (None: not known) loads in `runtime`, and how."""
    route = runtime.per_layer_route(spec.model_type)
    uniform = "prune with `export='uniform'` (CLI `--export uniform`) for a stock checkpoint"
    if route is None:
        how = f"per_layer {spec.model_type} exports do not load there (it has no class with per-layer sizes); {uniform}"
        return RuntimeSupport(runtime.name, False, how)
    if traits is None and route.cannot_take:
        unless = " or ".join(TRAITS[t] for t in route.cannot_take)
        return RuntimeSupport(runtime.name, True, f"{route.how}; not for a checkpoint with {unless}")
    refused = [why for trait, why in route.cannot_take.items() if trait in (traits or ())]
    if refused:
        return RuntimeSupport(runtime.name, False, "; ".join(refused))
    return RuntimeSupport(runtime.name, True, route.how)


def _stock_support(runtime: Runtime, spec: ArchitectureSpec, query_heads_lost: bool) -> RuntimeSupport:
    """Whether a uniform (stock) export of `spec` loads in `runtime`: not where its loader fixes the query width
    and the checkpoint lost query heads."""
    if query_heads_lost and runtime.name in spec.query_width_fixed_in:
        how = (
            f"its {spec.model_type} loader builds q_proj and o_proj at hidden_size x hidden_size and this "
            f"checkpoint lost query heads; prune with `runtimes=['{runtime.name}']` (CLI `--runtime "
            f"{runtime.name}`) to keep them, or export per_layer"
        )
        return RuntimeSupport(runtime.name, False, how)
    return RuntimeSupport(runtime.name, True, runtime.uniform)


def _kept(spec: ArchitectureSpec, mode: str, runtimes: Sequence[str]) -> dict[str, str]:
    """Structure kinds a prune must keep whole so its export loads in `runtimes`: {structure: why}. Only uniform
    exports of architectures whose stock loader fixes the query width there are limited: such a loader takes no
    change in query heads, and a lost KV group takes its query heads with it."""
    fixed = [name for name in runtimes if name in spec.query_width_fixed_in]
    if mode != "uniform" or not fixed:
        return {}
    why = (
        f"{' and '.join(fixed)} build {spec.model_type}'s q_proj and o_proj at hidden_size x hidden_size, "
        "so every query head stays (and every KV group, which takes its query heads with it)"
    )
    return {"query_heads": why, "kv_heads": why}


@dataclass(frozen=True)
class ExportTarget:
    """What an export mode, the runtimes asked for and (when known) the architecture decide about a prune."""

    mode: str
    allocation: str | None
    """The allocation the mode needs (`uniform`: the same sizes in every layer), None when the recipe chooses."""
    protected_layers: tuple[int, ...] | None
    """The protected layers the mode needs (`uniform`: none, every layer pruned alike), None when the recipe
    chooses."""
    kept: Mapping[str, str]
    """Structure kinds the prune keeps whole so the export loads in the runtimes asked for: {structure: why}."""
    support: tuple[RuntimeSupport, ...]
    """Where the export loads, one entry per registered runtime (empty when the architecture is not known)."""
    refusals: tuple[str, ...]
    """Why an asked-for runtime cannot load this export (empty: every one can)."""


def export_target(
    mode: str,
    runtimes: Sequence[str] = (),
    model_type: str | None = None,
    traits: Collection[str] | None = None,
    query_heads_lost: bool = False,
) -> ExportTarget:
    """The one rule of where an export runs: from the export `mode`, the `runtimes` asked for and, when known,
    the architecture (`model_type`), the checkpoint's `TRAITS` (`checkpoint_traits`; None: not known) and whether
    some layer lost query heads (what a stock loader that fixes the query width cannot take).

    Without `model_type` only what holds for every architecture is decided: the mode's allocation and protected
    layers, and a runtime that loads no per_layer export at all is refused for `per_layer`."""
    check_choice("export", mode, EXPORT_MODES)
    names = [RUNTIMES.lookup(r).name for r in runtimes]
    uniform = mode == "uniform"
    fixed = ("uniform", ()) if uniform else (None, None)
    if model_type is None:
        refusals = tuple(
            f"runtimes includes {name!r}, which loads only stock checkpoints, but export='per_layer' writes sizes "
            "per layer. Use export='uniform' with allocation='uniform' and protected_layers=[] (CLI: --export uniform)."
            for name in names
            if not uniform
            and RUNTIMES[name].per_layer is None
            and not RUNTIMES[name].per_layer_by_architecture
        )
        return ExportTarget(mode, *fixed, {}, (), refusals)
    spec = ARCHITECTURES.lookup(model_type)
    support = tuple(
        _stock_support(runtime, spec, query_heads_lost)
        if uniform
        else _per_layer_support(runtime, spec, traits)
        for runtime in RUNTIMES.values()
    )
    refusals = tuple(
        f"runtimes includes {s.runtime!r}, where this model's {mode} export will not load: {s.how}."
        for s in support
        if s.runtime in names and not s.loads
    )
    return ExportTarget(mode, *fixed, _kept(spec, mode, names), support, refusals)


@dataclass
class ExportConfig(ConfigMixin):
    """How the pruned model is written and where it must run (`RESPConfig.export`); `export_target` decides what
    the mode and the runtimes fix."""

    mode: Literal["uniform", "per_layer"] = "per_layer"
    """`per_layer`: sizes per layer (transformers, lm-evaluation-harness, vLLM with optimum-resp, llama.cpp through
    `optimum-resp export-gguf` for Qwen2, Llama and tied Qwen3); `uniform`: a stock checkpoint that llama.cpp's own
    converter takes (its allocation is uniform and no layer is protected)."""
    allocation: Literal["global", "uniform"] | None = None
    """`global`: one ranking across layers (non-uniform sizes); `uniform`: the same counts per layer. None: what the
    mode needs (`uniform` for a uniform export, else `global`)."""
    protected_layers: list[int] | None = None
    """Layers never pruned. None: the first int(0.1 * num_layers) layers and the last one (none for a uniform
    export)."""
    channel_multiple: int = 1
    """Keep each pruned layer's MLP width a multiple of this (e.g. 64 or 128 for GPU-friendly shapes)."""
    runtimes: list[str] = field(default_factory=list)
    """Runtimes the export must load in (`RUNTIMES`: transformers, lm-evaluation-harness, vllm, llama.cpp). The prune
    then keeps what their loaders fix (a uniform Qwen2 for llama.cpp or vLLM keeps every query head), and an
    export they cannot load is refused before any work."""

    def __post_init__(self) -> None:
        """Refuse every invalid value; settle the allocation and protected layers the mode decides."""
        check_choice("export", self.mode, EXPORT_MODES)
        if self.allocation is not None:
            check_choice("allocation", self.allocation, ("global", "uniform"))
        if self.protected_layers is not None:
            if not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.protected_layers
            ):
                raise ValueError(
                    f"protected_layers must be a list of layer indices >= 0; got {self.protected_layers!r}."
                )
            self.protected_layers = sorted(set(self.protected_layers))
        check_int("channel_multiple", self.channel_multiple)
        if not isinstance(self.runtimes, list | tuple) or not all(isinstance(r, str) for r in self.runtimes):
            raise ValueError(
                f"runtimes must be a list of runtime names from {list(RUNTIMES)}; got {self.runtimes!r}."
            )
        self.runtimes = list(dict.fromkeys(RUNTIMES.lookup(r).name for r in self.runtimes))
        target = export_target(self.mode, self.runtimes)
        if self.allocation is None:
            self.allocation = target.allocation or "global"
        elif target.allocation is not None and self.allocation != target.allocation:
            raise ValueError(
                f"export='{self.mode}' needs the same sizes in every layer: set allocation='{target.allocation}' (or "
                "leave it unset), or export='per_layer' to keep RESP's global ranking."
            )
        if target.protected_layers is not None:
            if self.protected_layers not in (None, list(target.protected_layers)):
                raise ValueError(
                    f"export='{self.mode}' needs every layer pruned alike, so no layer can be protected: leave "
                    "protected_layers unset (or []), or use export='per_layer'."
                )
            self.protected_layers = list(target.protected_layers)
        if target.refusals:
            raise ValueError(target.refusals[0])

    def protected_for(self, num_layers: int) -> list[int]:
        """The protected layer indices for a model with `num_layers` layers."""
        if self.protected_layers is None:
            return sorted(set(range(int(0.1 * num_layers))) | {num_layers - 1})
        bad = [i for i in self.protected_layers if i >= num_layers]
        if bad:
            raise ValueError(
                f"protected_layers {bad} do not exist: the model has {num_layers} layers (0..{num_layers - 1})."
            )
        return list(self.protected_layers)
