"""LoRA recovery after pruning: self-distillation on the dense model's own traces, then merged away.

The pruned model is fine-tuned with a peft `LoraConfig` through the `transformers.Trainer` on the
traces the *dense* model produced for the calibration prompts (no labels needed: the targets are
the model's own reasoning), then `merge_and_unload` folds the adapters into the weights, so the
saved model is a plain (smaller) checkpoint with no adapter left.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments

from .architectures import get_architecture
from .calibration import Trace, trace_token_ids
from .importance.data import CalibrationCollator, build_examples, quiet_progress

logger = logging.getLogger(__name__)

__all__ = ["LoRARecoveryResult", "recover_with_lora"]


@dataclass
class LoRARecoveryResult:
    model: PreTrainedModel
    train_loss: float
    seconds: float
    trainable_parameters: int


class _Examples(torch.utils.data.Dataset):
    def __init__(self, examples):
        self.examples = examples

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


def recover_with_lora(
    model: PreTrainedModel,
    tokenizer,
    traces: Sequence[Trace],
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    epochs: float = 1.0,
    learning_rate: float = 2e-4,
    batch_size: int = 4,
    max_length: int = 4096,
    seed: int = 0,
    progress: bool = True,
) -> LoRARecoveryResult:
    """Fine-tune LoRA adapters on every prunable linear with the decode-only loss, then merge them."""
    from peft import LoraConfig, get_peft_model

    spec = get_architecture(model)
    targets = sorted(
        {
            path.rsplit(".", 1)[-1]
            for path in (
                spec.q_proj,
                spec.k_proj,
                spec.v_proj,
                spec.o_proj,
                spec.gate_proj,
                spec.up_proj,
                spec.down_proj,
            )
        }
    )
    examples = build_examples(*trace_token_ids(tokenizer, traces), "decode", max_length)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM"
        ),
    )
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    pad = getattr(model.config, "pad_token_id", None)
    with tempfile.TemporaryDirectory(prefix="resp-lora-") as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=batch_size,
            num_train_epochs=epochs,
            learning_rate=learning_rate,
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
            train_dataset=_Examples(examples),
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
