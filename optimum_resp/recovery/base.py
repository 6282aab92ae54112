"""What every recovery method shares: its config section (`RecoveryConfig`), the registry of methods (`RECOVERY`),
the data it works on (`RecoveryData`) and what it returns (`RecoveryResult`).

A method runs in two steps the pruner calls: `prepare(teacher, data)` while the dense model is still loaded
(before the first stage frees it: what recovery needs from the dense model is taken then, and kept in the run
folder), and `run(model, data)` on the pruned model after the last stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel, TrainingArguments

from ..architectures import get_architecture
from ..calibration import Trace, trace_token_ids
from ..config_mixin import ConfigMixin
from ..importance.data import build_examples
from ..registry import Registry
from ..validation import check_int

__all__ = [
    "RECOVERY",
    "RecoveryConfig",
    "RecoveryData",
    "RecoveryResult",
    "lora_target_modules",
    "training_arguments",
]


@dataclass
class RecoveryData:
    """What recovery learns from: the dense model's traces (scored on their decode tokens, as in scoring) and the
    folder where it may keep what it must not lose (the run folder's `recovery/`; None: nothing is kept)."""

    tokenizer: Any
    traces: Sequence[Trace]
    max_length: int
    seed: int = 0
    folder: Path | None = None
    teacher: Any = None
    """What `prepare` took from the dense model for `run` (distillation: its `TeacherTargets`)."""

    def examples(self) -> list[dict[str, list[int]]]:
        """The traces as training examples: the token ids they were generated as, loss on the decode tokens."""
        return build_examples(*trace_token_ids(self.tokenizer, self.traces), "decode", self.max_length)


@dataclass
class RecoveryResult:
    """The recovered model (adapters merged away) and what recovery did."""

    model: PreTrainedModel
    train_loss: float | None
    seconds: float
    trainable_parameters: int
    tokens: int | None = None
    """Decode tokens trained on per epoch."""
    kl_before: float | None = None
    """Distillation: the mean KL to the teacher before and after (the figure it lowers)."""
    kl_after: float | None = None


@dataclass
class RecoveryConfig(ConfigMixin):
    """A recovery method's settings (`RESPConfig.recovery`); its JSON form names the method."""

    method: ClassVar[str] = ""

    tokens: int | None = None
    """Decode tokens to learn from per epoch: None, the dense calibration traces; more, and the dense model also
    answers the prompts given past `num_calibration_prompts` (before the first stage, kept in the run folder) until
    its traces hold this many."""

    def __post_init__(self) -> None:
        if self.tokens is not None:
            check_int("recovery tokens", self.tokens)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **super().to_dict()}

    def describe(self) -> str:
        """This recovery in a few words (the model card's recipe line)."""
        return f"{self.method} recovery"

    def check_memory(self, model: PreTrainedModel, longest_sequence: int, target_sparsity: float) -> None:
        """Refuse, before any work, a recovery of `model` pruned to `target_sparsity` that cannot fit."""

    def prepare(self, teacher: PreTrainedModel, data: RecoveryData) -> None:
        """Take what recovery needs from the dense `teacher` while it is loaded (default: nothing)."""

    def run(self, model: PreTrainedModel, data: RecoveryData) -> RecoveryResult:
        """Recover the pruned `model`."""
        raise NotImplementedError


RECOVERY: Registry[type[RecoveryConfig]] = Registry(
    "recovery method", hint="Or recovery='none'.", name_attr="method"
)
"""Recovery method name (`RESPConfig(recovery=...)`, `--recover`) -> its section's class."""


def lora_target_modules(model: PreTrainedModel) -> list[str]:
    """The module names LoRA adapts by default: every prunable linear of the model's architecture."""
    spec = get_architecture(model)
    paths = (spec.q_proj, spec.k_proj, spec.v_proj, spec.o_proj, spec.gate_proj, spec.up_proj, spec.down_proj)
    return sorted({path.rsplit(".", 1)[-1] for path in paths})


def training_arguments(
    output_dir: str | Path,
    *,
    batch_size: int,
    epochs: float,
    learning_rate: float,
    seed: int,
    progress: bool,
    save_steps: int | None = None,
    **extra: Any,
) -> TrainingArguments:
    """The Trainer settings every recovery shares: cosine schedule without warmup, no logging or reporting, the CPU
    where no GPU is; with `save_steps`, a checkpoint (the last one kept) every that many steps to resume from."""
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        logging_strategy="no",
        save_strategy="steps" if save_steps is not None else "no",
        **({"save_steps": save_steps, "save_total_limit": 1} if save_steps is not None else {}),
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        disable_tqdm=not progress,
        seed=seed,
        **extra,
    )
