"""Recovery after pruning: the recipe's `recovery` section, and LoRA self-distillation, merged away.

`RESPConfig.recovery` is None (no recovery) or a `RecoveryConfig` of a registered method (`RECOVERY`): today
`lora`, whose section holds a real peft `LoraConfig`. LoRA recovery fine-tunes the pruned model with that config
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
from typing import Any, ClassVar

import torch
from peft import LoraConfig, get_peft_model
from transformers import PreTrainedModel, Trainer, TrainingArguments

from .architectures import get_architecture
from .calibration import Trace, trace_token_ids
from .config_mixin import ConfigMixin, check_keys, to_plain
from .importance.data import CalibrationCollator, build_examples, quiet_progress
from .registry import Registry
from .validation import check_int, check_range

logger = logging.getLogger(__name__)

__all__ = [
    "RECOVERY",
    "LoRARecoveryResult",
    "LoraRecoveryConfig",
    "RecoveryConfig",
    "lora_target_modules",
    "recover_with_lora",
]


@dataclass
class RecoveryConfig(ConfigMixin):
    """A recovery method's settings (`RESPConfig.recovery`); its JSON form names the method."""

    method: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **super().to_dict()}

    def run(self, model: PreTrainedModel, tokenizer, traces: Sequence[Trace], max_length: int, seed: int):
        """Recover `model` on the dense model's `traces`; returns a result with `model`, `train_loss`, `seconds`
        and `trainable_parameters`."""
        raise NotImplementedError


RECOVERY: Registry[type[RecoveryConfig]] = Registry(
    "recovery method", hint="Or recovery='none'.", name_attr="method"
)
"""Recovery method name (`RESPConfig(recovery=...)`, `--recover`) -> its section's class."""


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

    def run(self, model: PreTrainedModel, tokenizer, traces: Sequence[Trace], max_length: int, seed: int):
        return recover_with_lora(model, tokenizer, traces, self, max_length=max_length, seed=seed)


def _json(value: Any) -> Any:
    """A LoraConfig value in its JSON form (sets as sorted lists)."""
    return sorted(value) if isinstance(value, set | frozenset) else to_plain(value)


@dataclass
class LoRARecoveryResult:
    model: PreTrainedModel
    train_loss: float
    seconds: float
    trainable_parameters: int


def lora_target_modules(model: PreTrainedModel) -> list[str]:
    """The module names LoRA adapts by default: every prunable linear of the model's architecture."""
    spec = get_architecture(model)
    paths = (spec.q_proj, spec.k_proj, spec.v_proj, spec.o_proj, spec.gate_proj, spec.up_proj, spec.down_proj)
    return sorted({path.rsplit(".", 1)[-1] for path in paths})


def recover_with_lora(
    model: PreTrainedModel,
    tokenizer,
    traces: Sequence[Trace],
    config: LoraRecoveryConfig | None = None,
    max_length: int = 4096,
    seed: int = 0,
    progress: bool = True,
) -> LoRARecoveryResult:
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
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=config.batch_size,
            num_train_epochs=config.epochs,
            learning_rate=config.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=0,
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            remove_unused_columns=False,
            disable_tqdm=not progress,
            seed=seed,
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
    return LoRARecoveryResult(
        merged, output.training_loss, output.metrics.get("train_runtime", 0.0), trainable
    )
