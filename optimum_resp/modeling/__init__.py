"""Per-layer (heterogeneous) model classes, registered with the Auto classes on import."""

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_resp import RESPLlamaConfig, RESPQwen2Config, RESPQwen3Config
from .modeling_resp import RESPLlamaForCausalLM, RESPQwen2ForCausalLM, RESPQwen3ForCausalLM

PER_LAYER_CLASSES = {
    RESPQwen3Config.model_type: (RESPQwen3Config, RESPQwen3ForCausalLM),
    RESPQwen2Config.model_type: (RESPQwen2Config, RESPQwen2ForCausalLM),
    RESPLlamaConfig.model_type: (RESPLlamaConfig, RESPLlamaForCausalLM),
}

for _model_type, (_config_cls, _model_cls) in PER_LAYER_CLASSES.items():
    AutoConfig.register(_model_type, _config_cls, exist_ok=True)
    AutoModelForCausalLM.register(_config_cls, _model_cls, exist_ok=True)

__all__ = [
    "PER_LAYER_CLASSES",
    "RESPLlamaConfig",
    "RESPLlamaForCausalLM",
    "RESPQwen2Config",
    "RESPQwen2ForCausalLM",
    "RESPQwen3Config",
    "RESPQwen3ForCausalLM",
]
