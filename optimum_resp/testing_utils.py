"""Tiny random-weight models and random keep-sets, for tests, demos and speed benchmarks."""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

from .architectures import LayerSizes, architecture_specs, get_architecture, layer_sizes
from .surgery import LayerKeep, PruningPlan

__all__ = ["QWEN3_0_6B_SHAPE", "random_plan", "tiny_config"]

_TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    # head_dim * heads != hidden_size on purpose: code that assumes hidden // heads breaks here.
    head_dim=16,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)

# Qwen3-0.6B's shape (random weights): the speed benchmark's model.
QWEN3_0_6B_SHAPE = dict(
    vocab_size=151936,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    tie_word_embeddings=True,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
)


def tiny_config(model_type: str = "qwen3", **overrides) -> PretrainedConfig:
    """A small config of a supported architecture, with the overrides its spec asks for (Llama: every bias)."""
    specs = {spec.model_type: spec for spec in architecture_specs()}
    if model_type not in specs:
        raise ValueError(f"No tiny config for {model_type!r}; choose one of {sorted(specs)}.")
    spec = specs[model_type]
    return spec.config_class(**{**_TINY, **spec.tiny_config_overrides, **overrides})


def random_plan(
    config: PretrainedConfig,
    sparsity: float,
    per_layer: bool = False,
    seed: int = 0,
    spread: float = 0.5,
    channel_multiple: int = 1,
) -> PruningPlan:
    """Random keep-sets removing about `sparsity` of decoder-linear parameters.

    Attention loses whole KV groups (with their query heads, so the KV cache shrinks too); MLP
    channels are then chosen so each layer meets its parameter target. With `per_layer`, layer
    targets ramp from (1 - spread) * sparsity to (1 + spread) * sparsity, so sizes differ per layer.
    Kept channel counts are rounded to the nearest multiple of `channel_multiple`.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1); got {sparsity}.")
    spec = get_architecture(config)
    cost = spec.structure_param_costs(config)
    gen = torch.Generator().manual_seed(seed)
    sizes = layer_sizes(config)
    if not per_layer and len(set(sizes)) > 1:
        raise ValueError("A uniform random plan needs a model whose layers all have the same sizes.")
    n = len(sizes)
    keeps = []
    for i, size in enumerate(sizes):
        target = sparsity * ((1 - spread) + 2 * spread * i / (n - 1)) if per_layer and n > 1 else sparsity
        target = min(max(target, 0.0), 0.95)
        dense = spec.layer_linear_params(config, size)
        fixed = spec.layer_linear_params(config, LayerSizes(0, 0, 0))  # biases no structure owns
        kv = max(1, round(size.num_key_value_heads * (1 - target)))
        per_group = size.heads_per_group
        attn = kv * (cost["kv_heads"] + per_group * cost["query_heads"])
        channels = round(((1 - target) * dense - attn - fixed) / cost["channels"])
        channels = channel_multiple * round(channels / channel_multiple)
        channels = min(max(channels, min(channel_multiple, size.intermediate_size)), size.intermediate_size)
        groups = sorted(torch.randperm(size.num_key_value_heads, generator=gen)[:kv].tolist())
        heads = [g * per_group + j for g in groups for j in range(per_group)]
        chans = sorted(torch.randperm(size.intermediate_size, generator=gen)[:channels].tolist())
        keeps.append(LayerKeep(tuple(heads), tuple(groups), tuple(chans)))
    return PruningPlan(tuple(keeps))


def word_level_tokenizer(vocab_size: int):
    """A chat tokenizer of exactly `vocab_size` tokens for random-weight models of real shapes (which no shipped
    tokenizer fits): whitespace-separated words `t0 t1 ...` plus the testbed's special tokens and chat template.
    Decoding then encoding any id sequence gives it back, so traces score exactly the tokens generated."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from .testbed.tokenizer import CHAT_TEMPLATE, IM_END, IM_START, PAD_TOKEN, THINK_END, THINK_START

    specials = [PAD_TOKEN, IM_START, IM_END, THINK_START, THINK_END, "<unk>"]
    if vocab_size <= len(specials):
        raise ValueError(f"vocab_size must be > {len(specials)}; got {vocab_size}.")
    vocab = {t: i for i, t in enumerate(specials + [f"t{i}" for i in range(vocab_size - len(specials))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,  # <unk> stays an ordinary token: text a random-weight model emits, not stripped
        additional_special_tokens=[IM_START, THINK_START, THINK_END],
        chat_template=CHAT_TEMPLATE,
    )
    return tokenizer
