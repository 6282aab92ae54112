"""The llama.cpp graphs a per_layer export is written as: what each computes and what it cannot take.

llama.cpp reads `{arch}.attention.head_count`, `{arch}.attention.head_count_kv` and
`{arch}.feed_forward_length` as per-layer arrays for every architecture (`get_key_or_arr` in
src/llama-model.cpp), but only some graphs build each layer at its own size. Two of them compute a pruned
Qwen3 / Qwen2 / Llama layer exactly, with no change to llama.cpp:

- `openelm` (src/models/openelm.cpp): a fused q|k|v projection laid out q heads, then k heads, then v heads;
  per-head RMSNorm on q and k; NEOX rope (transformers' rotate-half); SwiGLU MLP; RMSNorm before attention and
  MLP; scale 1/sqrt(head_dim); no bias anywhere. Its output projection is always the token embedding (created
  from `token_embd` with TENSOR_DUPLICATED; a separate `output.weight` is never read): a Qwen3 layer, for Qwen3
  checkpoints that tie their embeddings (0.6B, 1.7B, 4B; 8B and larger do not).
- `deci` (src/models/deci.cpp, Nemotron-NAS): Llama's layer with optional q/k/v, o and MLP biases, NORM rope
  (pairs of consecutive values, so q and k rows are permuted as llama.cpp's converter does for Llama), and a
  separate `output.weight` or the tied embedding: Llama and Qwen2 (whose q/k/v biases it loads).

Both give a zero size a meaning of its own (deci: no KV heads is a "linear attention" layer, no MLP skips the
layer's attention output), so a layer with no query head, KV head or MLP channel is never written.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...registry import Registry

__all__ = ["GRAPHS", "GGUFGraph"]


@dataclass(frozen=True)
class GGUFGraph:
    """One llama.cpp graph with per-layer sizes, as the writer needs it: its name and what it computes."""

    arch: str
    """`general.architecture` (a `gguf.MODEL_ARCH_NAMES` value)."""
    source: str
    """Where llama.cpp builds it (for error messages)."""
    fused_qkv: bool
    """One `attn_qkv` tensor (q heads, k heads, v heads) instead of `attn_q` / `attn_k` / `attn_v`."""
    qk_norm: bool
    """Per-head RMSNorm on q and k (`attn_q_norm` / `attn_k_norm`); the checkpoint must have it iff the graph does."""
    rope_pairs: bool
    """NORM rope (consecutive pairs): q and k rows are permuted from transformers' rotate-half layout."""
    takes_biases: bool
    """Loads biases on the attention and MLP linears."""
    untied_output: bool
    """Loads a separate `output.weight`; False: the output projection is always the token embedding."""


GRAPHS: Registry[GGUFGraph] = Registry(
    "llama.cpp graph",
    hint="A per_layer export is written for the graph registered under its stock model type "
    "(optimum_resp/integrations/llama_cpp/graphs.py).",
)
"""Stock model type -> the llama.cpp graph its per_layer exports are written as."""

OPENELM = GGUFGraph(
    arch="openelm",
    source="src/models/openelm.cpp",
    fused_qkv=True,
    qk_norm=True,
    rope_pairs=False,
    takes_biases=False,
    untied_output=False,
)
DECI = GGUFGraph(
    arch="deci",
    source="src/models/deci.cpp",
    fused_qkv=False,
    qk_norm=False,
    rope_pairs=True,
    takes_biases=True,
    untied_output=True,
)
GRAPHS.register("qwen3", OPENELM)
GRAPHS.register("qwen2", DECI)
GRAPHS.register("llama", DECI)
