"""The no-step Trainer: an ordinary `transformers.Trainer` run whose optimizer step does nothing.

Taylor importance takes its gradients from this run (its data loading, distributed sampler, accelerate device
placement and progress bar) while the weights never change: the loss is RESP's, each sample's mean
cross-entropy over its labelled (decode) tokens and the batch's the mean over its real samples, each backward
stays local to its process (no gradient sync), and every batch reports its samples, tokens and loss to the
collector (`taylor_collector.TaylorImportanceCallback`) before its backward.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, modeling_utils

from .data import IGNORE_INDEX

if TYPE_CHECKING:
    from .taylor_collector import TaylorImportanceCallback

__all__ = ["SAMPLE_WEIGHT", "EvenExamples", "NoStepOptimizer", "NoStepTrainer", "set_checkpointing"]

# transformers releases with `slice_logits_to_keep` project only the True positions of a boolean
# (batch, seq) `logits_to_keep`; older ones (5.19, which vLLM pins) take a 1D tensor of positions.
_MASK_LOGITS_TO_KEEP = hasattr(modeling_utils, "slice_logits_to_keep")

SAMPLE_WEIGHT = "sample_weight"
"""The key of each example's weight: 1 for a real sample, 0 for a copy that evens out the processes' batches."""


class NoStepOptimizer(torch.optim.Optimizer):
    """An optimizer whose step does nothing, so the Trainer's loop runs and the weights never change."""

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        super().__init__(list(params), {"lr": 0.0})

    def step(self, closure=None):
        return None


class EvenExamples(torch.utils.data.Dataset):
    """Examples plus zero-weight copies of the shortest one, so every process gets equally many batches.

    accelerate would otherwise repeat real samples to even out the last step across processes,
    counting them twice; padding samples carry `sample_weight` 0 and contribute nothing.
    """

    def __init__(self, examples: Sequence[Mapping[str, list[int]]], multiple: int) -> None:
        self.items = [{**e, SAMPLE_WEIGHT: 1.0} for e in examples]
        padded = math.ceil(len(examples) / multiple) * multiple
        shortest = min(examples, key=lambda e: len(e["input_ids"]))
        self.items += [{**shortest, SAMPLE_WEIGHT: 0.0} for _ in range(padded - len(examples))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def set_checkpointing(model: nn.Module, on: bool) -> None:
    """Switch transformers' layer checkpointing (non-reentrant); `activation_checkpointing_*` from 5.25 on."""
    if on:
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()


def _eval_mode(model: nn.Module) -> None:
    """Eval mode (no dropout), except the flag that lets a checkpointing layer recompute in the backward pass:
    transformers checkpoints a layer only while `layer.training`, and dropout reads its own module's flag."""
    model.eval()
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False):
            module.training = True


class NoStepTrainer(Trainer):
    """Trainer computing RESP's per-sample token-mean loss, with no weight update and no gradient sync."""

    def __init__(
        self,
        *args: Any,
        collector: TaylorImportanceCallback,
        bf16_autocast: bool = False,
        autocast_cache: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.collector = collector
        self.bf16_autocast = bf16_autocast
        self.autocast_cache = autocast_cache
        # compute_loss normalises per sample itself; no token counting (and no cross-process gather) needed.
        self.model_accepts_loss_kwargs = False
        unwrapped = self.accelerator.unwrap_model(self.model)
        self._slice_logits = "logits_to_keep" in inspect.signature(unwrapped.forward).parameters

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            params = [p for p in (model or self.model).parameters() if p.requires_grad]
            self.optimizer = NoStepOptimizer(params)
        return self.optimizer

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        # Importance needs each process's own gradients, not their all-reduced average: never sync.
        with self.accelerator.no_sync(model):
            return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        _eval_mode(model)  # training_step switched to train mode; importance is taken without dropout
        inputs = dict(inputs)
        weights = inputs.pop(SAMPLE_WEIGHT).to(torch.float32)
        labels = inputs.pop("labels")
        targets = labels[:, 1:]
        scored = targets.ne(IGNORE_INDEX)  # (B, T-1): position t predicts token t+1
        device_type = labels.device.type
        with torch.autocast(
            device_type, dtype=torch.bfloat16, enabled=self.bf16_autocast, cache_enabled=self.autocast_cache
        ):
            logits, outputs = self._forward(model, inputs, scored)
        if logits.dim() == 3:  # full logits (the model ignored or lacks logits_to_keep)
            logits = logits[:, :-1][scored]
        token_loss = F.cross_entropy(logits.float(), targets[scored], reduction="none")
        rows = scored.nonzero()[:, 0]  # boolean indexing is row-major, so rows line up with token_loss
        per_sample_sum = torch.zeros(labels.shape[0], dtype=token_loss.dtype, device=token_loss.device)
        per_sample_sum = per_sample_sum.index_add(0, rows, token_loss)
        tokens = scored.sum(dim=1)
        per_sample = per_sample_sum / tokens.clamp(min=1)
        num_samples = weights.sum()
        loss = (per_sample * weights).sum() / num_samples.clamp(min=1.0)
        mask = inputs.get("attention_mask")
        self.collector.begin_batch(
            num_samples.item(),
            (tokens * weights).sum().item(),
            (per_sample.detach() * weights).sum().item(),
            positions=labels.numel(),
            padding=0 if mask is None else int(mask.numel() - mask.sum().item()),
        )
        return (loss, outputs) if return_outputs else loss

    def _forward(self, model: nn.Module, inputs: dict[str, Any], scored: torch.Tensor):
        """The model's logits at the scored positions (or all of them, when it cannot slice), and its output."""
        if self._slice_logits:
            # Project only the scored positions onto the vocabulary (decode-only: the trace, not the prompt).
            keep = F.pad(scored, (0, 1), value=False)
            if _MASK_LOGITS_TO_KEEP:
                outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
                logits = outputs.logits
            else:  # 1D positions, kept in every row: the union of the scored ones, then each row's own
                positions = keep.any(dim=0).nonzero().squeeze(1)
                outputs = model(**inputs, logits_to_keep=positions, use_cache=False)
                logits = outputs.logits[keep[:, positions]]
        else:
            outputs = model(**inputs, use_cache=False)
            logits = outputs.logits
        return logits, outputs
