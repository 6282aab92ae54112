"""What goes in a per_layer GGUF: each tensor's name, shape and type, and how it is made from the checkpoint.

Pure functions over names, shapes and tensors: `tensor_recipes` lays a checkpoint out as a graph's tensors
(`graphs.GGUFGraph`), `tensor_type` picks each tensor's GGML type as llama.cpp's converter does, and `encode`
turns a tensor into the bytes GGUFWriter writes (q8_0 through gguf-py's own quantizer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import gguf
import numpy as np
import torch

from ...architectures import ArchitectureSpec, LayerSizes
from .graphs import GGUFGraph

__all__ = [
    "OUTTYPES",
    "TensorRecipe",
    "encode",
    "fuse_rows",
    "rope_pairs",
    "stored_shape",
    "tensor_recipes",
    "tensor_type",
]

OUTTYPES: dict[str, gguf.LlamaFileType] = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
"""`--outtype` -> the file type GGUF records (the converter's names)."""

_TYPE_OF_FILE = {
    gguf.LlamaFileType.ALL_F32: gguf.GGMLQuantizationType.F32,
    gguf.LlamaFileType.MOSTLY_F16: gguf.GGMLQuantizationType.F16,
    gguf.LlamaFileType.MOSTLY_Q8_0: gguf.GGMLQuantizationType.Q8_0,
}

T = gguf.MODEL_TENSOR
Make = Callable[[Sequence[torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class TensorRecipe:
    """One GGUF tensor: its name, its shape (transformers' order, rows first) and how the checkpoint makes it."""

    name: str
    sources: tuple[str, ...]
    """Checkpoint tensor names, in the order `make` takes them."""
    shape: tuple[int, ...]
    make: Make


def rope_pairs(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """q or k rows (weight or bias) from transformers' rotate-half layout (each head's first half rotates with its
    second) to llama.cpp's NORM rope (consecutive pairs): the permutation llama.cpp's converter applies to Llama."""
    head_dim = t.shape[0] // num_heads
    return t.reshape(num_heads, 2, head_dim // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)


def fuse_rows(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """q, k and v stacked row-wise: openelm's `attn_qkv` (q heads, then k heads, then v heads)."""
    return torch.cat(list(tensors), dim=0)


def _only(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return tensors[0]


def _name(kind: gguf.MODEL_TENSOR, bid: int | None = None, suffix: str = "weight") -> str:
    return f"{gguf.TENSOR_NAMES[kind].format(bid=bid)}.{suffix}"


def _copy(
    kind: gguf.MODEL_TENSOR, source: str, shapes: Mapping[str, tuple[int, ...]], bid: int | None = None
):
    suffix = source.rsplit(".", 1)[1]
    return TensorRecipe(_name(kind, bid, suffix), (source,), shapes[source], _only)


def _layer_recipes(
    i: int, sizes: LayerSizes, spec: ArchitectureSpec, graph: GGUFGraph, shapes: Mapping[str, tuple[int, ...]]
) -> list[TensorRecipe]:
    """Layer i's tensors; `shapes` holds every checkpoint tensor (biases are written where the checkpoint has them)."""
    p = f"{spec.layers_path}.{i}"
    recipes = [_copy(T.ATTN_NORM, f"{p}.input_layernorm.weight", shapes, i)]
    if graph.fused_qkv:
        qkv = tuple(f"{p}.{m}.weight" for m in (spec.q_proj, spec.k_proj, spec.v_proj))
        rows = sum(shapes[s][0] for s in qkv)
        recipes.append(TensorRecipe(_name(T.ATTN_QKV, i), qkv, (rows, shapes[qkv[0]][1]), fuse_rows))
    else:
        heads = {spec.q_proj: sizes.num_attention_heads, spec.k_proj: sizes.num_key_value_heads}
        for kind, module in ((T.ATTN_Q, spec.q_proj), (T.ATTN_K, spec.k_proj), (T.ATTN_V, spec.v_proj)):
            for suffix in ("weight", "bias"):
                source = f"{p}.{module}.{suffix}"
                if source not in shapes:
                    continue
                make: Make = _only
                if graph.rope_pairs and module in heads:
                    make = lambda t, n=heads[module]: rope_pairs(t[0], n)  # noqa: E731
                recipes.append(TensorRecipe(_name(kind, i, suffix), (source,), shapes[source], make))
    if graph.qk_norm:
        q_norm, k_norm = spec.head_norms
        recipes += [_copy(T.ATTN_Q_NORM, f"{p}.{q_norm}.weight", shapes, i)]
        recipes += [_copy(T.ATTN_K_NORM, f"{p}.{k_norm}.weight", shapes, i)]
    recipes.append(_copy(T.FFN_NORM, f"{p}.post_attention_layernorm.weight", shapes, i))
    linears = ((T.ATTN_OUT, spec.o_proj), (T.FFN_GATE, spec.gate_proj), (T.FFN_UP, spec.up_proj))
    for kind, module in (*linears, (T.FFN_DOWN, spec.down_proj)):
        for suffix in ("weight", "bias") if graph.takes_biases else ("weight",):
            if f"{p}.{module}.{suffix}" in shapes:
                recipes.append(_copy(kind, f"{p}.{module}.{suffix}", shapes, i))
    return recipes


def tensor_recipes(
    spec: ArchitectureSpec,
    graph: GGUFGraph,
    layers: Sequence[LayerSizes],
    shapes: Mapping[str, tuple[int, ...]],
    tied: bool,
) -> list[TensorRecipe]:
    """Every tensor of the GGUF, from the checkpoint's tensor shapes: embeddings, final norm, output, layers."""
    recipes = [
        _copy(T.TOKEN_EMBD, "model.embed_tokens.weight", shapes),
        _copy(T.OUTPUT_NORM, "model.norm.weight", shapes),
    ]
    if not tied:
        recipes.append(_copy(T.OUTPUT, "lm_head.weight", shapes))
    for i, sizes in enumerate(layers):
        recipes += _layer_recipes(i, sizes, spec, graph, shapes)
    return recipes


def tensor_type(name: str, shape: Sequence[int], outtype: str) -> gguf.GGMLQuantizationType:
    """The GGML type llama.cpp's converter gives this tensor: F32 for norms, biases and other 1-D tensors; the
    file's type otherwise, with F16 for a q8_0 row whose length is not a multiple of q8_0's 32-value block."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    qtype = _TYPE_OF_FILE[OUTTYPES[outtype]]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def stored_shape(shape: Sequence[int], qtype: gguf.GGMLQuantizationType) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the array GGUFWriter stores for a tensor of `shape` in `qtype` (bytes for quantized types)."""
    if qtype == gguf.GGMLQuantizationType.F32:
        return tuple(shape), np.dtype(np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return tuple(shape), np.dtype(np.float16)
    return gguf.quant_shape_to_byte_shape(shape, qtype), np.dtype(np.uint8)


def encode(tensor: torch.Tensor, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """`tensor` as GGUF stores it in `qtype` (gguf-py's quantizer for q8_0)."""
    return gguf.quants.quantize(tensor.detach().to(torch.float32).contiguous().numpy(), qtype)
