"""Where an export runs: which runtimes load which export mode and which structure changes.

A `uniform` export is a stock checkpoint, so it loads wherever the stock class of its architecture
does, unless that runtime's loader fixes a shape the prune changed: llama.cpp's and vLLM's Qwen2
classes build q_proj and o_proj at hidden_size x hidden_size, so a uniform Qwen2 that lost query heads
(or KV groups, which take their query heads with them) does not load there. A `per_layer` export
needs a class that reads sizes per layer: transformers has one (`import optimum_resp`, or the modeling
code saved beside the weights with `trust_remote_code=True`), lm-evaluation-harness loads through
transformers, vLLM has one through optimum-resp's plugin, llama.cpp has none (its converter knows the
stock architectures only, and its Qwen/Llama graphs take one head count and one MLP width for all layers).

The facts live as data: per runtime here (`RUNTIMES`), per architecture on its `ArchitectureSpec`
(`query_width_fixed_in`). `RESPConfig.runtimes` asks for a prune whose export loads in the named runtimes;
`export_support` (read through `PruneReport.runtime_support`) says where a pruned model loads, for the
model card, `info` and the warning a prune logs when its uniform export will not load somewhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .architectures import ARCHITECTURES, ArchitectureSpec
from .registry import Registry

__all__ = [
    "RUNTIMES",
    "Runtime",
    "RuntimeSupport",
    "export_support",
    "kept_structures",
]


@dataclass(frozen=True)
class Runtime:
    """A program that runs exported checkpoints, and how it loads each export mode."""

    name: str
    uniform: str
    """How a uniform (stock) export loads there."""
    per_layer: str | None
    """How a per_layer export loads there; None when it cannot."""
    aliases: tuple[str, ...] = ()


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


def export_support(model_type: str, export: str, query_heads_lost: bool) -> list[RuntimeSupport]:
    """Where a pruned `model_type` model loads, one entry per registered runtime.

    `export` is `uniform` or `per_layer`; `query_heads_lost` whether some layer has fewer query heads than
    the dense model (what a stock loader that fixes the query width cannot take).
    """
    spec = ARCHITECTURES.lookup(model_type)
    out = []
    for runtime in RUNTIMES.values():
        if export == "per_layer":
            if runtime.per_layer is None:
                how = (
                    "per_layer exports do not load there (it has no class with per-layer sizes); prune with "
                    "`export='uniform'` (CLI `--export uniform`) for a stock checkpoint"
                )
                out.append(RuntimeSupport(runtime.name, False, how))
            else:
                out.append(RuntimeSupport(runtime.name, True, runtime.per_layer))
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
