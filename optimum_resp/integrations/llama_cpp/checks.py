"""What the GGUF writer refuses, before it writes anything: each message names the reason and what loads instead.

Pure functions of the export's config, its checkpoint tensor names and the target graph (`graphs.GGUFGraph`);
the writer raises `GGUFExportError` with every problem found, so one run lists them all.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from transformers import PretrainedConfig

from ...architectures import ArchitectureSpec, LayerSizes
from .graphs import GGUFGraph

__all__ = ["GGUFExportError", "checkpoint_problems", "layer_problems", "output_problem", "shape_problems"]

UNIFORM_ROUTE = (
    "the nearest export that loads in llama.cpp is the uniform one: prune with `--export uniform` (Python "
    "`export='uniform'`) and convert it with llama.cpp's own convert_hf_to_gguf.py"
)


class GGUFExportError(ValueError):
    """A folder or output path the GGUF writer refuses; nothing is written."""


def layer_problems(layers: Sequence[LayerSizes], graph: GGUFGraph) -> list[str]:
    """Layer sizes the graph cannot build: a zero count (each graph gives 0 a meaning of its own, or none), or query
    heads that do not split evenly over the KV heads (llama.cpp, like transformers' repeat_kv, shares each KV head
    with an equal run of query heads)."""
    problems = []
    for i, s in enumerate(layers):
        empty = [
            name
            for name, count in (
                ("query heads", s.num_attention_heads),
                ("KV heads", s.num_key_value_heads),
                ("MLP channels", s.intermediate_size),
            )
            if count <= 0
        ]
        if empty:
            problems.append(
                f"layer {i} keeps no {' and no '.join(empty)}, which llama.cpp's {graph.arch} graph ({graph.source}) "
                "cannot build as this layer (nor can transformers): keep at least one in that layer, or protect it "
                "from pruning"
            )
        elif s.num_attention_heads % s.num_key_value_heads:
            problems.append(
                f"layer {i} has {s.num_attention_heads} query heads over {s.num_key_value_heads} KV heads, not the "
                "same number per KV head, which llama.cpp's attention (like transformers' repeat_kv) needs: keep the "
                "same number of query heads in each kept KV group"
            )
    return problems


def expected_shapes(
    spec: ArchitectureSpec, config: PretrainedConfig, layers: Sequence[LayerSizes]
) -> dict[str, tuple[int, ...]]:
    """The shape config.json gives every checkpoint tensor the graph reads (biases and lm_head where present)."""
    hidden, head_dim = config.hidden_size, spec.head_dim(config)
    shapes = {
        "model.embed_tokens.weight": (config.vocab_size, hidden),
        "lm_head.weight": (config.vocab_size, hidden),
        "model.norm.weight": (hidden,),
    }
    for i, s in enumerate(layers):
        p = f"{spec.layers_path}.{i}"
        q, kv, ff = s.num_attention_heads * head_dim, s.num_key_value_heads * head_dim, s.intermediate_size
        for module, rows, cols in (
            (spec.q_proj, q, hidden),
            (spec.k_proj, kv, hidden),
            (spec.v_proj, kv, hidden),
            (spec.o_proj, hidden, q),
            (spec.gate_proj, ff, hidden),
            (spec.up_proj, ff, hidden),
            (spec.down_proj, hidden, ff),
        ):
            shapes[f"{p}.{module}.weight"] = (rows, cols)
            shapes[f"{p}.{module}.bias"] = (rows,)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            shapes[f"{p}.{norm}.weight"] = (hidden,)
        for norm in spec.head_norms:
            shapes[f"{p}.{norm}.weight"] = (head_dim,)
    return shapes


def shape_problems(
    spec: ArchitectureSpec,
    config: PretrainedConfig,
    layers: Sequence[LayerSizes],
    shapes: Mapping[str, tuple[int, ...]],
) -> list[str]:
    """Checkpoint tensors whose shape is not the one config.json gives them (llama.cpp builds each layer from the
    sizes in the GGUF's metadata, which come from config.json, and refuses a tensor of another shape)."""
    expected = expected_shapes(spec, config, layers)
    wrong = [
        f"{name} is {list(shape)}, not {list(expected[name])}"
        for name, shape in shapes.items()
        if name in expected and tuple(shape) != expected[name]
    ]
    if not wrong:
        return []
    listed = ", ".join(wrong[:3]) + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else "")
    return [
        f"its weights do not have the sizes its config.json gives them ({listed}): the folder was edited or only "
        "partly saved; save the pruned model again (`save_pretrained`, or prune again)"
    ]


def _bias_reasons(
    spec: ArchitectureSpec, config: PretrainedConfig, tensor_names: Collection[str]
) -> list[str]:
    """Why the checkpoint has biases: its architecture's own, bias compensation's, or tensors found in the files."""
    reasons = []
    own = spec.biases(config)
    if own.qkv or own.o or own.mlp:
        reasons.append(f"{spec.model_type}'s own biases (attention_bias / mlp_bias in config.json)")
    layer_configs = [config, *(config.per_layer_config or [])]
    added = [
        path
        for path, flag in spec.added_bias_flags.items()
        if any(getattr(c, flag, False) for c in layer_configs)
    ]
    if added:
        reasons.append(f"bias compensation (FLAP) added biases to {' and '.join(added)}")
    found = sorted(n for n in tensor_names if n.endswith(".bias"))
    if found and not reasons:
        reasons.append(
            f"bias tensors in the weights ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''})"
        )
    return reasons


def checkpoint_problems(
    spec: ArchitectureSpec,
    graph: GGUFGraph,
    config: PretrainedConfig,
    tensor_names: Collection[str],
    tied: bool,
) -> list[str]:
    """Features of the checkpoint the graph does not compute: an untied output projection, biases."""
    problems = []
    if not tied and not graph.untied_output:
        problems.append(
            "its embeddings are untied (tie_word_embeddings is false: lm_head is a weight of its own), and llama.cpp's "
            f"{graph.arch} graph ({graph.source}) always uses the token embedding as its output projection; "
            f"{UNIFORM_ROUTE}, and this per_layer export runs in transformers and vLLM"
        )
    if not graph.takes_biases:
        reasons = _bias_reasons(spec, config, tensor_names)
        if reasons:
            problems.append(
                f"it has biases ({'; '.join(reasons)}), and llama.cpp's {graph.arch} graph ({graph.source}) has "
                "none: prune without bias compensation (RESP, Wanda-sp or magnitude, not FLAP) for a per_layer GGUF, "
                "or run this export in transformers or vLLM"
            )
    return problems


def output_problem(out: Path) -> str | None:
    """Why `out` cannot be written (a folder, or a place without write permission); None when it can."""
    if out.is_dir():
        return f"{out} is a folder: name the .gguf file to write (e.g. {out / 'model.gguf'})"
    existing = out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot write {out}: {existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write {out}: no write permission in {existing}; choose another --outfile"
    return None
