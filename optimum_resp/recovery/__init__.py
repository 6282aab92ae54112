"""Recovery after pruning: the recipe's `recovery` section and the methods registered for it (`RECOVERY`).

`RESPConfig.recovery` is None (no recovery) or the section of a registered method: `lora` (hard-label LoRA on the
dense model's traces, merged; `lora.py`) or `distill` (KL to the dense model's top-k distributions on those traces,
full parameters or LoRA; `distillation.py`). Both learn from the traces the dense model wrote for the calibration
prompts, the distribution RESP calibrates on.
"""

from .base import RECOVERY, RecoveryConfig, RecoveryData, RecoveryResult, lora_target_modules
from .distillation import DistillRecoveryConfig, RecoveryMemoryError, TeacherTargets, distill
from .lora import LoraRecoveryConfig, recover_with_lora

__all__ = [
    "RECOVERY",
    "DistillRecoveryConfig",
    "LoraRecoveryConfig",
    "RecoveryConfig",
    "RecoveryData",
    "RecoveryMemoryError",
    "RecoveryResult",
    "TeacherTargets",
    "distill",
    "lora_target_modules",
    "recover_with_lora",
]
