"""optimum-resp: self-reflective structured pruning (RESP) for reasoning language models.

Importing the package registers the per-layer model classes with transformers' Auto classes, so
`AutoModelForCausalLM.from_pretrained(dir)` loads any checkpoint optimum-resp writes.
"""

from .accounting import SPARSITY_DEFINITION, SizeReport, size_report
from .architectures import (
    ArchitectureSpec,
    LayerSizes,
    UnsupportedArchitectureError,
    get_architecture,
    layer_sizes,
    register_architecture,
    supported_model_types,
)
from .configuration_resp import RESPConfig
from .generation import GenerationSettings
from .modeling import (
    RESPLlamaConfig,
    RESPLlamaForCausalLM,
    RESPQwen2Config,
    RESPQwen2ForCausalLM,
    RESPQwen3Config,
    RESPQwen3ForCausalLM,
)
from .pruner import PruneResult, RESPPruner, compose_plans
from .surgery import LayerKeep, PruningPlan, PruningPlanError, prune_model, validate_plan
from .version import __version__

__all__ = [
    "SPARSITY_DEFINITION",
    "ArchitectureSpec",
    "GenerationSettings",
    "LayerKeep",
    "LayerSizes",
    "PruneResult",
    "PruningPlan",
    "PruningPlanError",
    "RESPConfig",
    "RESPPruner",
    "RESPLlamaConfig",
    "RESPLlamaForCausalLM",
    "RESPQwen2Config",
    "RESPQwen2ForCausalLM",
    "RESPQwen3Config",
    "RESPQwen3ForCausalLM",
    "SizeReport",
    "UnsupportedArchitectureError",
    "compose_plans",
    "get_architecture",
    "layer_sizes",
    "prune_model",
    "register_architecture",
    "size_report",
    "supported_model_types",
    "validate_plan",
    "__version__",
]
