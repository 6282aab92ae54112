"""vLLM support for per_layer RESP checkpoints: `vllm serve PRUNED_DIR` and `vllm.LLM(PRUNED_DIR)`.

`register` is the `vllm.general_plugins` entry point (pyproject.toml), so vLLM calls it in every one
of its processes once optimum-resp is installed: it registers the per-layer config classes with
transformers and the model classes of `.models` with vLLM's model registry (lazily, by name, so no
vLLM model code is imported before vLLM needs it), and hooks `check_vllm_compatible` into vLLM's
config verification so a checkpoint vLLM cannot run is refused, naming the layer, before any
engine starts. Nothing here imports vLLM at module import time.
"""

from __future__ import annotations

import logging

from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

__all__ = [
    "VLLMCompatibilityError",
    "check_vllm_compatible",
    "register",
    "stock_architectures",
    "vllm_architectures",
]

_MODELS_MODULE = "optimum_resp.integrations.vllm.models"


class VLLMCompatibilityError(ValueError):
    """A checkpoint vLLM cannot run as it is (raised before any engine starts)."""


def vllm_architectures() -> list[str]:
    """The `architectures` names of our per_layer classes, the names vLLM's registry knows them by."""
    from ...architectures import architecture_specs

    return [spec.per_layer_causal_lm_class.__name__ for spec in architecture_specs()]


def stock_architectures() -> list[str]:
    """The stock causal-LM names of the architectures optimum-resp prunes (vLLM's own classes run them)."""
    from ...architectures import architecture_specs

    return sorted(spec.causal_lm_class.__name__ for spec in architecture_specs())


def check_vllm_compatible(config: PretrainedConfig, tensor_parallel_size: int = 1) -> None:
    """Refuse a config vLLM cannot run with this tensor-parallel size, naming the layer and the fix.

    vLLM shards each layer's query heads across the TP ranks and either shards or replicates its KV
    heads, so in every layer the query heads must divide by the TP size, and the KV heads must divide
    by it or divide it; every query head must read one KV head (equal groups). Stock model types get
    vLLM's stock classes, which build every layer from the global sizes (so their layers must agree)
    and, for Qwen2, derive head_dim as hidden_size // num_attention_heads
    (`ArchitectureSpec.query_width_fixed_in`).
    """
    from ...architectures import get_architecture, layer_sizes

    tp = int(tensor_parallel_size)
    if tp < 1:
        raise VLLMCompatibilityError(f"tensor_parallel_size must be >= 1; got {tensor_parallel_size}.")
    spec = get_architecture(config)
    if config.model_type == spec.model_type:  # a stock checkpoint: vLLM's own model class runs it
        if getattr(config, "is_heterogeneous", False):
            raise VLLMCompatibilityError(
                f"This {config.model_type} checkpoint's layers differ in size (per_layer_config), but vLLM's "
                f"{spec.causal_lm_class.__name__} builds every layer from the global sizes. optimum-resp writes "
                f"such models as model_type {spec.per_layer_model_type!r}, which its vLLM plugin loads: re-export "
                "it with export='per_layer', or prune with allocation='uniform', export='uniform'."
            )
        heads = layer_sizes(config)[0].num_attention_heads
        head_dim = spec.head_dim(config)
        if "vllm" in spec.query_width_fixed_in and head_dim * heads != config.hidden_size:
            raise VLLMCompatibilityError(
                f"vLLM's {spec.causal_lm_class.__name__} derives head_dim as hidden_size // num_attention_heads "
                f"({config.hidden_size} // {heads} = {config.hidden_size // heads}), but this checkpoint's "
                f"head_dim is {head_dim}: it lost query heads. Export it with export='per_layer' (optimum-resp's "
                f"{spec.per_layer_model_type} class reads head_dim), or prune it with runtimes=['vllm'] "
                "(CLI --runtime vllm) for a uniform export that keeps every query head."
            )
    for i, sizes in enumerate(layer_sizes(config)):
        heads, kv = sizes.num_attention_heads, sizes.num_key_value_heads
        where = f"layer {i} has {heads} query heads and {kv} KV heads"
        if heads < 1 or kv < 1 or sizes.intermediate_size < 1:
            raise VLLMCompatibilityError(
                f"{where} and {sizes.intermediate_size} MLP channels: vLLM cannot build a layer with an "
                "empty attention or MLP. Prune with a lower per-layer limit so every layer keeps some."
            )
        if heads % kv:
            raise VLLMCompatibilityError(
                f"{where}: the query heads do not split into equal groups per KV head, which neither vLLM "
                "nor transformers' GQA can express. Prune query heads in whole groups."
            )
        if heads % tp or (kv % tp and tp % kv):
            raise VLLMCompatibilityError(
                f"{where}, which tensor parallelism over {tp} ranks cannot split (query heads must "
                f"divide by {tp}; KV heads must divide by {tp} or divide it). Serve it with a "
                "tensor_parallel_size that divides every layer's head counts (1 always does), or prune "
                "with head counts that stay multiples of it."
            )


def _verify_hook():
    """A `VerifyAndUpdateConfig` for vLLM's per-architecture config checks (built when vLLM is there)."""
    from vllm.model_executor.models.config import VerifyAndUpdateConfig

    from ...architectures import architecture_specs, supported_model_types

    ours = set(supported_model_types()) | {spec.per_layer_model_type for spec in architecture_specs()}

    class RESPCheckpointCheck(VerifyAndUpdateConfig):
        @staticmethod
        def verify_and_update_config(vllm_config) -> None:
            config = vllm_config.model_config.hf_config
            if getattr(config, "model_type", None) not in ours:
                return  # a stock architecture name on a model type we do not know: vLLM's business
            check_vllm_compatible(config, vllm_config.parallel_config.tensor_parallel_size)

    return RESPCheckpointCheck


def register() -> None:
    """Make vLLM load per_layer RESP checkpoints (idempotent: vLLM calls it once per process)."""
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    from ... import modeling  # noqa: F401 - registers resp_qwen3 / resp_qwen2 / resp_llama with AutoConfig

    supported = set(ModelRegistry.get_supported_archs())
    for arch in vllm_architectures():
        if arch not in supported:
            ModelRegistry.register_model(arch, f"{_MODELS_MODULE}:{arch}")
    hook = _verify_hook()
    for arch in vllm_architectures() + stock_architectures():
        # Only where vLLM has no check of its own for the name: never replace one of vLLM's.
        MODELS_CONFIG_MAP.setdefault(arch, hook)
    logger.debug("optimum-resp registered %s with vLLM", vllm_architectures())
