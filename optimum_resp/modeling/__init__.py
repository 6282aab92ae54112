"""Per-layer (heterogeneous) config and model classes; `optimum_resp.architectures` registers each with
the Auto classes as part of its architecture's one `register_architecture` call."""

from .configuration_per_layer import RESPLlamaConfig, RESPQwen2Config, RESPQwen3Config
from .modeling_per_layer import RESPLlamaForCausalLM, RESPQwen2ForCausalLM, RESPQwen3ForCausalLM

__all__ = [
    "RESPLlamaConfig",
    "RESPLlamaForCausalLM",
    "RESPQwen2Config",
    "RESPQwen2ForCausalLM",
    "RESPQwen3Config",
    "RESPQwen3ForCausalLM",
]
