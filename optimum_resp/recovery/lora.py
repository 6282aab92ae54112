"""LoRA recovery (`recovery="lora"`): self-distillation with hard labels on the dense model's traces, merged away.

The section holds a real peft `LoraConfig`. LoRA recovery fine-tunes the pruned model with that config
through the `transformers.Trainer` on the traces the *dense* model produced for the calibration prompts (no labels
needed: the targets are the model's own reasoning), then `merge_and_unload` folds the adapters into the weights,
so the saved model is a plain (smaller) checkpoint with no adapter left.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from peft import LoraConfig, get_peft_model
from transformers import PreTrainedModel, Trainer

from ..calibration import Trace, trace_token_ids
from ..config_mixin import check_keys, to_plain
from ..importance.data import IGNORE_INDEX, CalibrationCollator, build_examples, quiet_progress
from ..validation import check_int, check_range
from .base import (
    RECOVERY,
    RecoveryConfig,
    RecoveryData,
    RecoveryResult,
    lora_target_modules,
    training_arguments,
)

logger = logging.getLogger(__name__)

__all__ = ["LoraRecoveryConfig", "recover_with_lora"]


def _default_lora() -> LoraConfig:
    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05)


LORA_KEYS = ("r", "lora_alpha", "lora_dropout")
"""The LoraConfig fields a recovery section always writes (the others only where they differ from peft's)."""


@RECOVERY.register("lora")
@dataclass
class LoraRecoveryConfig(RecoveryConfig):
    """LoRA self-distillation on the dense model's traces, merged into the weights."""

    lora: LoraConfig = field(default_factory=_default_lora)
    """The adapters (a peft LoraConfig, or a dict of its fields): rank 8, alpha 16, dropout 0.05. Without
    `target_modules`, every prunable linear of the architecture; the task type is always CAUSAL_LM."""
    epochs: float = 1.0
    learning_rate: float = 2e-4
    batch_size: int = 4
    """Examples per training step."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.lora, Mapping):  # laid over this section's defaults, not peft's
            check_keys("LoraConfig", self.lora, [f.name for f in dataclasses.fields(LoraConfig) if f.init])
            self.lora = dataclasses.replace(_default_lora(), **self.lora)
        if not isinstance(self.lora, LoraConfig):
            raise ValueError(f"lora must be a peft LoraConfig or a dict of its fields, got {self.lora!r}")
        check_int("lora r", self.lora.r)
        check_int("lora_alpha", self.lora.lora_alpha)
        check_range("lora_dropout", self.lora.lora_dropout, 0.0, 1.0, high_open=True)
        check_range("epochs", self.epochs, 0.0, 1000.0, low_open=True)
        check_range("learning_rate", self.learning_rate, 0.0, 1.0, low_open=True)
        check_int("batch_size", self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        """The LoRA settings as the fields of `LORA_KEYS` plus those that differ from peft's defaults."""
        lora, default = self.lora.to_dict(), LoraConfig().to_dict()
        kept = {k: v for k, v in lora.items() if k in LORA_KEYS or v != default.get(k)}
        return {**super().to_dict(), "lora": {k: _json(v) for k, v in kept.items()}}

    def describe(self) -> str:
        return f"LoRA recovery (rank {self.lora.r}, {self.epochs:g} epoch(s) on the dense traces, merged)"

    def run(self, model: PreTrainedModel, data: RecoveryData) -> RecoveryResult:
        return recover_with_lora(
            model, data.tokenizer, data.traces, self, max_length=data.max_length, seed=data.seed
        )


def _json(value: Any) -> Any:
    """A LoraConfig value in its JSON form (sets as sorted lists)."""
    return sorted(value) if isinstance(value, set | frozenset) else to_plain(value)


def recover_with_lora(
    model: PreTrainedModel,
    tokenizer,
    traces: Sequence[Trace],
    config: LoraRecoveryConfig | None = None,
    max_length: int = 4096,
    seed: int = 0,
    progress: bool = True,
) -> RecoveryResult:
    """Fine-tune LoRA adapters (`config.lora`; by default on every prunable linear) with the decode-only loss on
    `traces`, then merge them."""
    config = config or LoraRecoveryConfig()
    targets = lora_target_modules(model)
    examples = build_examples(*trace_token_ids(tokenizer, traces), "decode", max_length)
    lora = dataclasses.replace(
        config.lora, target_modules=config.lora.target_modules or targets, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    pad = getattr(model.config, "pad_token_id", None)
    with tempfile.TemporaryDirectory(prefix="resp-lora-") as tmp:
        args = training_arguments(
            tmp,
            batch_size=config.batch_size,
            epochs=config.epochs,
            learning_rate=config.learning_rate,
            seed=seed,
            progress=progress,
        )
        trainer = Trainer(
            model=peft_model,
            args=args,
            train_dataset=examples,  # a list is a map-style dataset to the DataLoader
            data_collator=CalibrationCollator(0 if pad is None else pad),
        )
        output = quiet_progress(trainer, "LoRA recovery").train()
    merged = peft_model.merge_and_unload()
    merged.eval()
    logger.info(
        "LoRA recovery: %d trainable parameters, train loss %.4f, %.1fs",
        trainable,
        output.training_loss,
        output.metrics.get("train_runtime", 0.0),
    )
    tokens = sum(sum(1 for t in e["labels"][1:] if t != IGNORE_INDEX) for e in examples)
    return RecoveryResult(
        merged, output.training_loss, output.metrics.get("train_runtime", 0.0), trainable, tokens=tokens
    )
