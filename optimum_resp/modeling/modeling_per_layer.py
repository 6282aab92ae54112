# Saved beside per_layer checkpoints and loaded with `trust_remote_code=True`: imports nothing but
# transformers and the config file next to it.
"""Models whose decoder layers are built from `config.per_layer_config[i]`.

The stock Qwen3/Qwen2/Llama layers already take their sizes from the config they are given; only the
stock model classes hand every layer the global config. These classes hand layer i its own resolved
config, and are otherwise the stock classes (same forward, same weights layout, same generation).
"""

from torch import nn
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)
from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2DecoderLayer,
    Qwen2ForCausalLM,
    Qwen2Model,
    Qwen2RMSNorm,
    Qwen2RotaryEmbedding,
)
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3DecoderLayer,
    Qwen3ForCausalLM,
    Qwen3Model,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
)

from .configuration_per_layer import RESPLlamaConfig, RESPQwen2Config, RESPQwen3Config

# Config flags giving o_proj / down_proj a bias in every layer (stock Qwen3/Qwen2 have none there):
# set on models whose pruning folded the removed inputs' mean into a bias (FLAP bias compensation).
O_PROJ_BIAS = "o_proj_bias"
DOWN_PROJ_BIAS = "down_proj_bias"


def _add_compensation_biases(layer, config) -> None:
    """Give o_proj / down_proj a bias when the (layer) config asks for one and the stock layer has none."""
    for flag, parent_name, name in (
        (O_PROJ_BIAS, "self_attn", "o_proj"),
        (DOWN_PROJ_BIAS, "mlp", "down_proj"),
    ):
        parent = getattr(layer, parent_name)
        linear = getattr(parent, name)
        if getattr(config, flag, False) and linear.bias is None:
            w = linear.weight
            setattr(
                parent, name, nn.Linear(w.shape[1], w.shape[0], bias=True, device=w.device, dtype=w.dtype)
            )


def _init_per_layer_decoder(model, config, layer_cls, norm_cls, rotary_cls) -> None:
    """The stock decoder __init__, except that layer i is built from `config.per_layer_config[i]`."""
    model.padding_idx = config.pad_token_id
    model.vocab_size = config.vocab_size
    model.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, model.padding_idx)
    model.layers = nn.ModuleList(
        [layer_cls(config.per_layer_config[i], i) for i in range(config.num_hidden_layers)]
    )
    for i, layer in enumerate(model.layers):
        _add_compensation_biases(layer, config.per_layer_config[i])
    model.norm = norm_cls(config.hidden_size, eps=config.rms_norm_eps)
    model.rotary_emb = rotary_cls(config=config)
    model.gradient_checkpointing = False
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        model.has_sliding_layers = True
    elif hasattr(config, "layer_types"):
        model.has_sliding_layers = False
    model.post_init()


def _init_causal_lm(model, config, decoder_cls) -> None:
    """The stock causal-LM __init__ around a per-layer decoder."""
    model.model = decoder_cls(config)
    model.vocab_size = config.vocab_size
    model.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
    model.post_init()


class RESPQwen3Model(Qwen3Model):
    config_class = RESPQwen3Config

    def __init__(self, config: RESPQwen3Config):
        super(Qwen3Model, self).__init__(config)
        _init_per_layer_decoder(self, config, Qwen3DecoderLayer, Qwen3RMSNorm, Qwen3RotaryEmbedding)


class RESPQwen3ForCausalLM(Qwen3ForCausalLM):
    config_class = RESPQwen3Config

    def __init__(self, config: RESPQwen3Config):
        super(Qwen3ForCausalLM, self).__init__(config)
        _init_causal_lm(self, config, RESPQwen3Model)


class RESPQwen2Model(Qwen2Model):
    config_class = RESPQwen2Config

    def __init__(self, config: RESPQwen2Config):
        super(Qwen2Model, self).__init__(config)
        _init_per_layer_decoder(self, config, Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding)


class RESPQwen2ForCausalLM(Qwen2ForCausalLM):
    config_class = RESPQwen2Config

    def __init__(self, config: RESPQwen2Config):
        super(Qwen2ForCausalLM, self).__init__(config)
        _init_causal_lm(self, config, RESPQwen2Model)


class RESPLlamaModel(LlamaModel):
    config_class = RESPLlamaConfig

    def __init__(self, config: RESPLlamaConfig):
        super(LlamaModel, self).__init__(config)
        _init_per_layer_decoder(self, config, LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding)


class RESPLlamaForCausalLM(LlamaForCausalLM):
    config_class = RESPLlamaConfig

    def __init__(self, config: RESPLlamaConfig):
        super(LlamaForCausalLM, self).__init__(config)
        _init_causal_lm(self, config, RESPLlamaModel)


# save_pretrained writes `auto_map` and copies this file and configuration_per_layer.py beside the weights,
# so `from_pretrained(dir, trust_remote_code=True)` works where optimum_resp is not installed.
for _config_cls, _model_cls in (
    (RESPQwen3Config, RESPQwen3ForCausalLM),
    (RESPQwen2Config, RESPQwen2ForCausalLM),
    (RESPLlamaConfig, RESPLlamaForCausalLM),
):
    _config_cls.register_for_auto_class()
    _model_cls.register_for_auto_class("AutoModelForCausalLM")
