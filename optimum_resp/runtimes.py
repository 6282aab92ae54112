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
`ArchitectureSpec` (`query_width_fixed_in`). `RESPConfig.runtimes` asks for a prune whose export loads in the
named runtimes; `export_support` (read through `PruneReport.runtime_support`) says where a pruned model loads,
for the model card, `info` and the warning a prune logs when its uniform export will not load somewhere.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from transformers import PretrainedConfig

from .architectures import ARCHITECTURES, ArchitectureSpec, get_architecture
from .registry import Registry

__all__ = [
    "RUNTIMES",
    "TRAITS",
    "PerLayerRoute",
    "Runtime",
    "RuntimeSupport",
    "checkpoint_traits",
    "export_support",
    "kept_structures",
]

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


def kept_structures(spec: ArchitectureSpec, runtimes: list[str], export: str) -> dict[str, str]:
    """Structure kinds a prune must keep whole so its `export` loads in `runtimes`: {structure: why}.

    Only uniform exports of architectures whose stock loader fixes the query width there are limited:
    such a loader takes no change in query heads, and a lost KV group takes its query heads with it.
    """
    if export != "uniform":
        return {}
    fixed = [
        name for name in (RUNTIMES.lookup(r).name for r in runtimes) if name in spec.query_width_fixed_in
    ]
    if not fixed:
        return {}
    why = (
        f"{' and '.join(fixed)} build {spec.model_type}'s q_proj and o_proj at hidden_size x hidden_size, "
        "so every query head stays (and every KV group, which takes its query heads with it)"
    )
    return {"query_heads": why, "kv_heads": why}


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


def export_support(
    model_type: str, export: str, query_heads_lost: bool, traits: Collection[str] | None = None
) -> list[RuntimeSupport]:
    """Where a pruned `model_type` model loads, one entry per registered runtime.

    `export` is `uniform` or `per_layer`; `query_heads_lost` whether some layer has fewer query heads than
    the dense model (what a stock loader that fixes the query width cannot take); `traits` the checkpoint's
    `TRAITS` (`checkpoint_traits`; None when not known, e.g. a report written before they were recorded).
    """
    spec = ARCHITECTURES.lookup(model_type)
    out = []
    for runtime in RUNTIMES.values():
        if export == "per_layer":
            out.append(_per_layer_support(runtime, spec, traits))
        elif query_heads_lost and runtime.name in spec.query_width_fixed_in:
            how = (
                f"its {spec.model_type} loader builds q_proj and o_proj at hidden_size x hidden_size and this "
                f"checkpoint lost query heads; prune with `runtimes=['{runtime.name}']` (CLI `--runtime "
                f"{runtime.name}`) to keep them, or export per_layer"
            )
            out.append(RuntimeSupport(runtime.name, False, how))
        else:
            out.append(RuntimeSupport(runtime.name, True, runtime.uniform))
    return out
