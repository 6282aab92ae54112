"""vLLM model classes for per_layer RESP checkpoints (`resp_qwen3`, `resp_qwen2`, `resp_llama`).

A per_layer checkpoint is a stock Qwen3 / Qwen2 / Llama whose layer i has its own query heads, KV
heads and MLP width, read from `config.per_layer_config[i]`. So each class is vLLM's own causal LM
with one change: layer i is vLLM's stock decoder layer built from layer i's config. The weights keep
the stock names and load through vLLM's stacked qkv / gate_up loading; vLLM's KV-cache manager sizes
every layer's cache from that layer's attention, so pruned KV heads shrink the cache too.

Two layers are not vLLM's stock ones as they stand, and are fixed here rather than worked around:
- Qwen2: vLLM's Qwen2 attention derives head_dim as hidden_size // num_heads, wrong once query heads
  are pruned, so Qwen2 layers are built as vLLM's Llama layers with q/k/v biases (same computation,
  head_dim read from the config).
- biases vLLM's layer lacks but the checkpoint has (Qwen3 with attention_bias has an o_proj bias;
  FLAP's bias compensation adds o_proj / down_proj biases): those row-parallel linears get a bias.
A layer whose biases still differ from the checkpoint's is refused, never loaded half-initialised.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial

from torch import nn
from transformers import PretrainedConfig
from vllm.config import VllmConfig
from vllm.model_executor.layers.linear import RowParallelLinear
from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3DecoderLayer
from vllm.model_executor.models.utils import extract_layer_index

from ...architectures import get_architecture

__all__ = ["RESPLlamaForCausalLM", "RESPQwen2ForCausalLM", "RESPQwen3ForCausalLM"]

LayerBuilder = Callable[[VllmConfig, PretrainedConfig, str], nn.Module]


def _qwen3_layer(vllm_config: VllmConfig, layer_config: PretrainedConfig, prefix: str) -> nn.Module:
    return Qwen3DecoderLayer(
        config=layer_config,
        cache_config=vllm_config.cache_config,
        quant_config=vllm_config.quant_config,
        prefix=prefix,
    )


def _llama_layer(vllm_config: VllmConfig, layer_config: PretrainedConfig, prefix: str) -> nn.Module:
    return LlamaDecoderLayer(vllm_config=vllm_config, prefix=prefix, config=layer_config)


def _qwen2_layer(vllm_config: VllmConfig, layer_config: PretrainedConfig, prefix: str) -> nn.Module:
    # A Qwen2 layer is a Llama layer with q/k/v biases and none on o_proj or the MLP.
    as_llama = copy.copy(layer_config)
    as_llama.qkv_bias = True
    as_llama.attention_bias = False
    as_llama.mlp_bias = False
    return _llama_layer(vllm_config, as_llama, prefix)


def checkpoint_biases(config: PretrainedConfig, layer_config: PretrainedConfig) -> dict[str, bool]:
    """Which of the layer's vLLM linears carry a bias in the checkpoint (the transformers layer's biases)."""
    spec = get_architecture(config)
    b = spec.biases(layer_config)
    added = {path: bool(getattr(layer_config, flag, False)) for path, flag in spec.added_bias_flags.items()}
    return {
        "self_attn.qkv_proj": b.qkv,
        "self_attn.o_proj": b.o or added[spec.o_proj],
        "mlp.gate_up_proj": b.mlp,
        "mlp.down_proj": b.mlp or added[spec.down_proj],
    }


def _with_bias(linear: RowParallelLinear) -> RowParallelLinear:
    """The same row-parallel linear with a bias (vLLM adds it once, after the all-reduce)."""
    return RowParallelLinear(
        input_size=linear.input_size,
        output_size=linear.output_size,
        bias=True,
        quant_config=linear.quant_config,
        reduce_results=linear.reduce_results,
        prefix=linear.prefix,
    )


def _match_biases(layer: nn.Module, expected: dict[str, bool], layer_idx: int) -> None:
    """Give row-parallel linears the biases the checkpoint has; refuse any other mismatch."""
    for path, wanted in expected.items():
        parent_name, name = path.split(".")
        parent = getattr(layer, parent_name)
        linear = getattr(parent, name)
        has = getattr(linear, "bias", None) is not None
        if wanted and not has and isinstance(linear, RowParallelLinear):
            setattr(parent, name, _with_bias(linear))
        elif wanted != has:
            raise ValueError(
                f"layer {layer_idx}: the checkpoint {'has' if wanted else 'has no'} {path} bias but vLLM's "
                f"{type(layer).__name__} {'has none' if wanted else 'has one'}; this checkpoint cannot be "
                "loaded exactly."
            )


def _per_layer(build: LayerBuilder, *, vllm_config: VllmConfig, prefix: str = "") -> nn.Module:
    """Layer `prefix` (…layers.i) built by `build` from `per_layer_config[i]`, with the checkpoint's biases."""
    config = vllm_config.model_config.hf_config
    layer_idx = extract_layer_index(prefix)
    layer_config = config.per_layer_config[layer_idx]
    layer = build(vllm_config, layer_config, prefix)
    _match_biases(layer, checkpoint_biases(config, layer_config), layer_idx)
    return layer


class _RESPForCausalLM(LlamaForCausalLM):
    """vLLM's Llama causal LM (embeddings, norm, lm_head, tying, loading) around per-layer decoder layers."""

    build_layer: LayerBuilder

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(
            vllm_config=vllm_config, prefix=prefix, layer_type=partial(_per_layer, type(self).build_layer)
        )


class RESPQwen3ForCausalLM(_RESPForCausalLM):
    build_layer = staticmethod(_qwen3_layer)


class RESPQwen2ForCausalLM(_RESPForCausalLM):
    build_layer = staticmethod(_qwen2_layer)


class RESPLlamaForCausalLM(_RESPForCausalLM):
    build_layer = staticmethod(_llama_layer)
