"""Where the prunable structures of each supported decoder architecture live.

A structure is a set of slices that are removed together (Torch-Pruning's "dependency group", as
data): a query head is rows of q_proj plus columns of o_proj; a KV group is rows of k_proj and
v_proj (and, implicitly, every query head that reads it); an MLP channel is a row of gate_proj
and up_proj plus a column of down_proj. Adding an architecture is one `register_architecture`
call (its stock and per_layer classes, where its structures live, what a tiny test config needs),
not a branch in the surgery, importance, allocation, modeling or test code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from .modeling import (
    RESPLlamaConfig,
    RESPLlamaForCausalLM,
    RESPQwen2Config,
    RESPQwen2ForCausalLM,
    RESPQwen3Config,
    RESPQwen3ForCausalLM,
)
from .modeling.modeling_per_layer import DOWN_PROJ_BIAS, O_PROJ_BIAS
from .registry import Registry

__all__ = [
    "ARCHITECTURES",
    "ArchitectureSpec",
    "LayerSizes",
    "LinearSlice",
    "STRUCTURES",
    "UnsupportedArchitectureError",
    "architecture_specs",
    "get_architecture",
    "layer_sizes",
    "register_architecture",
    "supported_model_types",
]

# The three structure kinds, in the order reports and plans list them.
STRUCTURES = ("query_heads", "kv_heads", "channels")
Structure = Literal["query_heads", "kv_heads", "channels"]


class UnsupportedArchitectureError(ValueError):
    """Raised for a model type with no registered structure description."""


@dataclass(frozen=True)
class LinearSlice:
    """One linear layer touched by a structure: its path inside a decoder layer and which side."""

    module: str  # e.g. "self_attn.q_proj", relative to the decoder layer
    dim: Literal["out", "in"]  # "out": rows of the weight (and bias); "in": columns


@dataclass(frozen=True)
class LayerSizes:
    """Structure counts of one decoder layer."""

    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def count(self, structure: Structure) -> int:
        return {
            "query_heads": self.num_attention_heads,
            "kv_heads": self.num_key_value_heads,
            "channels": self.intermediate_size,
        }[structure]

    def to_dict(self) -> dict[str, int]:
        return {
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "intermediate_size": self.intermediate_size,
        }


@dataclass(frozen=True)
class Biases:
    """Which decoder linears carry a bias (they change parameter counts, and biases are sliced too)."""

    qkv: bool
    o: bool
    mlp: bool


@dataclass(frozen=True)
class ArchitectureSpec:
    """Everything the pruner needs to know about one decoder-only architecture."""

    model_type: str
    config_class: type[PretrainedConfig]
    causal_lm_class: type
    per_layer_config_class: type[PretrainedConfig]  # optimum_resp.modeling: sizes per layer
    per_layer_causal_lm_class: type
    biases: Callable[[PretrainedConfig], Biases]
    layers_path: str = "model.layers"
    q_proj: str = "self_attn.q_proj"
    k_proj: str = "self_attn.k_proj"
    v_proj: str = "self_attn.v_proj"
    o_proj: str = "self_attn.o_proj"
    gate_proj: str = "mlp.gate_proj"
    up_proj: str = "mlp.up_proj"
    down_proj: str = "mlp.down_proj"
    # Modules of the layer that act per head and are left untouched by head removal (Qwen3 q/k norm).
    head_norms: tuple[str, ...] = ()
    # Runtimes (`optimum_resp.runtimes.RUNTIMES`) whose stock class of this architecture builds q_proj and
    # o_proj at hidden_size x hidden_size: a uniform export that lost query heads does not load there.
    query_width_fixed_in: tuple[str, ...] = ()
    # Overrides of `testing_utils.tiny_config`'s sizes this architecture needs (its own validation).
    tiny_config_overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def per_layer_model_type(self) -> str:
        return self.per_layer_config_class.model_type

    @property
    def added_bias_flags(self) -> dict[str, str]:
        """Linears the per_layer classes can give a bias the stock layer lacks: module path -> config flag.

        Bias compensation (FLAP) folds removed inputs into these biases; the flags make the per_layer
        classes build them, so a compensated model saves, reloads and resumes with them.
        """
        return {self.o_proj: O_PROJ_BIAS, self.down_proj: DOWN_PROJ_BIAS}

    def native_biases(self, config: PretrainedConfig) -> dict[str, bool]:
        """Whether the stock class of `config` has a bias on each linear of `added_bias_flags`."""
        b = self.biases(config)
        return {self.o_proj: b.o, self.down_proj: b.mlp}

    @property
    def structures(self) -> dict[str, tuple[LinearSlice, ...]]:
        """The slices each structure kind owns, in units of one head (head_dim rows) or one channel."""
        return {
            "query_heads": (LinearSlice(self.q_proj, "out"), LinearSlice(self.o_proj, "in")),
            "kv_heads": (LinearSlice(self.k_proj, "out"), LinearSlice(self.v_proj, "out")),
            "channels": (
                LinearSlice(self.gate_proj, "out"),
                LinearSlice(self.up_proj, "out"),
                LinearSlice(self.down_proj, "in"),
            ),
        }

    def head_dim(self, config: PretrainedConfig) -> int:
        """Head size from the config (never hidden_size // num_heads, wrong for small Qwen3 models)."""
        head_dim = getattr(config, "head_dim", None)
        if head_dim:
            return int(head_dim)
        sizes = layer_sizes(config)[0]
        return config.hidden_size // sizes.num_attention_heads

    def structure_param_costs(self, config: PretrainedConfig) -> dict[str, int]:
        """Decoder-linear parameters removed with one structure of each kind (biases included)."""
        b = self.biases(config)
        d, h = self.head_dim(config), config.hidden_size
        return {
            "query_heads": 2 * h * d + (d if b.qkv else 0),
            "kv_heads": 2 * h * d + (2 * d if b.qkv else 0),
            "channels": 3 * h + (2 if b.mlp else 0),
        }

    def layer_linear_params(self, config: PretrainedConfig, sizes: LayerSizes) -> int:
        """Parameters (weights and biases) of all linear layers of one decoder layer of these sizes."""
        b = self.biases(config)
        cost = self.structure_param_costs(config)
        fixed = (config.hidden_size if b.o else 0) + (config.hidden_size if b.mlp else 0)
        return (
            sizes.num_attention_heads * cost["query_heads"]
            + sizes.num_key_value_heads * cost["kv_heads"]
            + sizes.intermediate_size * cost["channels"]
            + fixed
        )


def _register_auto_classes(model_type: str, spec: ArchitectureSpec) -> None:
    """The per_layer classes join the Auto classes, so `AutoModelForCausalLM.from_pretrained` loads a prune."""
    AutoConfig.register(spec.per_layer_model_type, spec.per_layer_config_class, exist_ok=True)
    AutoModelForCausalLM.register(spec.per_layer_config_class, spec.per_layer_causal_lm_class, exist_ok=True)


ARCHITECTURES: Registry[ArchitectureSpec] = Registry(
    "architecture",
    error=UnsupportedArchitectureError,
    hint="To add one, describe where its heads and MLP channels live with "
    "`optimum_resp.architectures.register_architecture`.",
    on_register=_register_auto_classes,
)
"""Stock model type -> spec; a pruned checkpoint's per_layer model type is an alias of its stock type."""


def register_architecture(spec: ArchitectureSpec) -> ArchitectureSpec:
    """Register a spec under its stock and per-layer model types (its per_layer classes join the Auto classes)."""
    return ARCHITECTURES.register(spec.model_type, spec, aliases=(spec.per_layer_model_type,))


def architecture_specs() -> list[ArchitectureSpec]:
    """Every registered architecture, once each."""
    return list(ARCHITECTURES.values())


def supported_model_types() -> list[str]:
    """Stock model types that can be pruned."""
    return sorted(ARCHITECTURES)


def get_architecture(model_or_config) -> ArchitectureSpec:
    """The spec for a model or config; a clear error naming the supported types otherwise."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"Architecture {model_type!r} is not supported by optimum-resp. Supported model types: "
            f"{', '.join(supported_model_types())}. {ARCHITECTURES.hint}"
        )
    return ARCHITECTURES[model_type]


def layer_sizes(config: PretrainedConfig) -> list[LayerSizes]:
    """Per-layer structure counts, reading `per_layer_config` so heterogeneous configs work too."""
    sizes = []
    for layer_config in config.per_layer_config:
        heads = layer_config.num_attention_heads
        kv = getattr(layer_config, "num_key_value_heads", None) or heads
        sizes.append(LayerSizes(heads, kv, layer_config.intermediate_size))
    return sizes


register_architecture(
    ArchitectureSpec(
        model_type="qwen3",
        config_class=Qwen3Config,
        causal_lm_class=Qwen3ForCausalLM,
        per_layer_config_class=RESPQwen3Config,
        per_layer_causal_lm_class=RESPQwen3ForCausalLM,
        biases=lambda c: Biases(qkv=bool(c.attention_bias), o=bool(c.attention_bias), mlp=False),
        head_norms=("self_attn.q_norm", "self_attn.k_norm"),
    )
)
register_architecture(
    ArchitectureSpec(
        model_type="qwen2",
        config_class=Qwen2Config,
        causal_lm_class=Qwen2ForCausalLM,
        per_layer_config_class=RESPQwen2Config,
        per_layer_causal_lm_class=RESPQwen2ForCausalLM,
        biases=lambda c: Biases(qkv=True, o=False, mlp=False),
        # llama.cpp's Qwen2 graph (src/models/qwen2.cpp) and vLLM's Qwen2Attention take the query width
        # from hidden_size; their Qwen3 and Llama read head_dim (GGUF key_length, config head_dim).
        query_width_fixed_in=("llama.cpp", "vllm"),
    )
)
register_architecture(
    ArchitectureSpec(
        model_type="llama",
        config_class=LlamaConfig,
        causal_lm_class=LlamaForCausalLM,
        per_layer_config_class=RESPLlamaConfig,
        per_layer_causal_lm_class=RESPLlamaForCausalLM,
        biases=lambda c: Biases(qkv=bool(c.attention_bias), o=bool(c.attention_bias), mlp=bool(c.mlp_bias)),
        # Stock LlamaConfig requires hidden_size % num_attention_heads == 0 (6, 4 and 3 heads), and the
        # tiny Llama carries every bias it can.
        tiny_config_overrides={"hidden_size": 96, "attention_bias": True, "mlp_bias": True},
    )
)
