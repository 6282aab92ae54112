"""First-order Taylor importance from the decode-only loss, collected through a `transformers.Trainer` run.

The importance of a structure is sum |W * dL/dW| over its weights (and bias entries): the
first-order estimate of the loss change when it is removed. The loss is RESP's: each sample's loss
is the mean cross-entropy over its labelled (decode) tokens, the loss of a set of samples the mean
over samples.

Two pieces do the work: the no-step Trainer (`no_step_trainer`: an ordinary `Trainer` run, its data loading,
distributed sampler, accelerate device placement and progress bar, whose optimizer step is a no-op, so the
weights never change) and the collector (`taylor_collector`: per-parameter hooks that fold each gradient into
per-structure accumulators the moment it is ready and free it). Only the prunable linears require grad while
scoring. Under `torchrun` / `accelerate launch` every process scores its shard and the accumulators are summed
across processes at the end. `TaylorScorer` ties them together and owns its resources: `prepare` checks the
memory a pass needs and settles checkpointing and bf16 autocast before any work.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from transformers import TrainingArguments

from ..loading import cpu_has_bf16_matmuls
from ..memory import ScoringMemoryEstimate, check_scoring_memory
from ..validation import check_bool, check_int
from .base import Scorer, Scores, ScoringConfig, prunable_linears, register_scorer
from .data import CalibrationCollator, check_examples, quiet_progress
from .no_step_trainer import EvenExamples, NoStepTrainer, set_checkpointing
from .taylor_collector import AbsAfter, TaylorImportanceCallback

__all__ = ["AbsAfter", "TaylorConfig", "TaylorImportanceCallback", "TaylorScorer", "bf16_autocast_supported"]

logger = logging.getLogger(__name__)


@dataclass
class TaylorConfig(ScoringConfig):
    """Taylor's settings (`RESPConfig.scoring` when importance='taylor')."""

    abs_after: Literal["batch", "all"] = "batch"
    """`batch`: |W*g| per backward (memory-light); `all`: |W * mean g| as the reference (one fp32
    buffer per prunable weight)."""
    batch_size: int = 4
    """Examples per backward pass when scoring (sequences of similar length share a batch, longest first)."""
    gradient_checkpointing: bool | None = None
    """Scoring keeps only each layer's input and recomputes its activations in the backward pass: on the 0.6B
    shape (CPU, 2 x 1024 tokens) 3.3x less memory for 4% more time (benchmarks/bench_memory.py). None: chosen before
    any work, from the estimated memory of the scoring pass, off when the plain pass fits and on when only the
    checkpointed one does (neither fitting is refused with the fixes); True / False force it. The scores are the
    same."""
    bf16_autocast: bool | None = None
    """The scoring pass's forward runs under bf16 autocast (weights and their gradients keep their dtype). None:
    on where it speeds the model up (float32 weights on a CUDA GPU with bf16, or a CPU with AVX512-BF16 / AMX);
    True / False force it. Measured (benchmarks/bench_memory.py, bench_precision.py): on the 0.6B shape, CPU, 2 x
    1024 tokens, 1.6x faster and 0.75x the memory; on the testbed reasoner at 40% the keep-sets share 0.92 (Jaccard)
    with float32 against 0.71 between two float32 calibration draws, same mean accuracy (2 seeds)."""

    def __post_init__(self) -> None:
        self.check_literals()
        check_int("batch_size", self.batch_size)
        for name in ("gradient_checkpointing", "bf16_autocast"):
            if getattr(self, name) is not None:
                check_bool(name, getattr(self, name))


def bf16_autocast_supported(model: nn.Module) -> bool:
    """Whether bf16 autocast would speed `model` up: float32 weights on a device with bf16 matmuls (CUDA with
    bf16, or a CPU with AVX512-BF16 / AMX through oneDNN)."""
    param = next(model.parameters())
    if param.dtype != torch.float32:
        return False  # already half precision: autocast changes nothing (or, for fp16, only for the worse)
    if param.device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if param.device.type == "cpu":
        return cpu_has_bf16_matmuls()
    return False


@register_scorer("taylor")
class TaylorScorer(Scorer):
    """First-order Taylor importance sum |W * dL/dW| per structure, L the decode-only (or full) token-mean loss.

    The forward pass runs under bf16 autocast when `bf16_autocast` (None: where `bf16_autocast_supported`);
    the gradients reach the weights in their own dtype either way; `gradient_checkpointing` None is off, unless
    `prepare` finds that only the checkpointed pass fits (what it settles is in `resources`).
    `abs_after="batch"` (default) adds |W * g_b| after every backward pass and averages over
    backward passes: memory-light, and with batch size 1 the mean over samples of per-sample
    importance. `abs_after="all"` keeps a float32 gradient sum per prunable weight and returns
    |W * mean_i g_i| (the RESP reference estimator; extra memory: 4 bytes per prunable parameter),
    independent of batching. `training_args` overrides any `TrainingArguments` field.
    """

    requires = "gradients"
    config_class = TaylorConfig

    def __init__(
        self,
        abs_after: AbsAfter = "batch",
        batch_size: int = 1,
        progress: bool = True,
        seed: int = 0,
        training_args: Mapping[str, Any] | None = None,
        gradient_checkpointing: bool | None = False,
        bf16_autocast: bool | None = None,
    ) -> None:
        super().__init__()
        if abs_after not in ("batch", "all"):
            raise ValueError(f"abs_after must be 'batch' or 'all'; got {abs_after!r}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}.")
        self.abs_after = abs_after
        self.batch_size = batch_size
        self.progress = progress
        self.seed = seed
        self.training_args = dict(training_args or {})
        self.gradient_checkpointing = gradient_checkpointing
        self.bf16_autocast = bf16_autocast
        self.resources: ScoringMemoryEstimate | None = None
        """What `prepare` settled (checkpointing, autocast) for the passes that follow; None before it ran."""

    @classmethod
    def from_config(cls, config: TaylorConfig, seed: int = 0) -> TaylorScorer:
        return cls(
            abs_after=config.abs_after,
            batch_size=config.batch_size,
            seed=seed,
            gradient_checkpointing=config.gradient_checkpointing,  # None: `prepare` chooses
            bf16_autocast=config.bf16_autocast,
        )

    def prepare(
        self, model: nn.Module, longest_sequence: int, reserve_bytes: int = 0
    ) -> ScoringMemoryEstimate:
        """Settle bf16 autocast (None: on where `bf16_autocast_supported`) and gradient checkpointing (None: on only
        when the plain pass would not fit), and refuse a pass over `longest_sequence` tokens that cannot fit beside
        `reserve_bytes` (`memory.check_scoring_memory`)."""
        autocast = bf16_autocast_supported(model) if self.bf16_autocast is None else self.bf16_autocast
        self.resources = check_scoring_memory(
            model, self.batch_size, longest_sequence, self.gradient_checkpointing, reserve_bytes, autocast
        )
        return self.resources

    def _choices(self, model: nn.Module) -> tuple[bool, bool]:
        """(gradient checkpointing, bf16 autocast) for a pass over `model`: as `prepare` settled them, else as set."""
        if self.resources is not None:
            return self.resources.gradient_checkpointing, self.resources.bf16_autocast
        autocast = bf16_autocast_supported(model) if self.bf16_autocast is None else self.bf16_autocast
        return bool(self.gradient_checkpointing), autocast

    def _arguments(self, output_dir: str) -> TrainingArguments:
        cuda = torch.cuda.is_available()
        kwargs: dict[str, Any] = dict(
            output_dir=output_dir,
            per_device_train_batch_size=self.batch_size,
            gradient_accumulation_steps=1,
            num_train_epochs=1,  # one pass over the data
            max_steps=-1,
            max_grad_norm=0.0,  # no clipping: gradients are consumed (and freed) in the hooks
            train_sampling_strategy="sequential",  # deterministic batches, the same for 1 and N processes
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            eval_strategy="no",
            use_cpu=not cuda,
            remove_unused_columns=False,
            disable_tqdm=not self.progress,
            average_tokens_across_devices=False,
            dataloader_drop_last=False,
            seed=self.seed,
        )
        if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            kwargs["ddp_backend"] = "gloo"  # launched by torchrun / accelerate on CPU-only machines
        kwargs.update(self.training_args)
        return TrainingArguments(**kwargs)

    def score(
        self,
        model: nn.Module,
        examples: Sequence[Mapping[str, Sequence[int]]] | None = None,
        output_dir: str | None = None,
    ) -> Scores:
        """Run one Trainer pass over `examples` and return Taylor importance per layer (also in `last_stats`).

        Examples are scored longest first, so a batch holds sequences of similar length (little padding) and
        a batch too big for memory fails at the first step, not the last."""
        examples = sorted(check_examples(examples), key=lambda e: len(e["input_ids"]), reverse=True)
        linears = prunable_linears(model)
        prunable = {id(p) for lin in linears for _, p in lin.params}
        saved_requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        was_training = model.training
        use_cache = getattr(model.config, "use_cache", None)  # the Trainer switches it off for training
        # Non-reentrant checkpointing: the first layer's input needs no grad (only the linears require it).
        already = getattr(model, "is_activation_checkpointing", None)
        already = getattr(model, "is_gradient_checkpointing", False) if already is None else already
        checkpointing, autocast = self._choices(model)
        checkpointing = checkpointing and not already
        original_device = next(model.parameters()).device
        pad_token_id = getattr(model.config, "pad_token_id", None)
        collator = CalibrationCollator(0 if pad_token_id is None else pad_token_id)
        callback = TaylorImportanceCallback(linears, self.abs_after)
        trainer = None
        with tempfile.TemporaryDirectory(prefix="resp-taylor-") as tmp:
            args = self._arguments(output_dir or tmp)
            dataset = EvenExamples(examples, args.per_device_train_batch_size * max(args.world_size, 1))
            try:
                for p in model.parameters():
                    p.requires_grad_(id(p) in prunable)
                if checkpointing:
                    set_checkpointing(model, True)
                trainer = NoStepTrainer(
                    model=model,
                    args=args,
                    train_dataset=dataset,
                    data_collator=collator,
                    callbacks=[callback],
                    collector=callback,
                    bf16_autocast=autocast,
                    # Autocast's cache holds every layer's bf16 weight copy until the forward ends; the plain
                    # pass keeps those copies for backward anyway, a checkpointed one would not: no cache there
                    # (1.3 GiB less on the 0.6B shape at 2 x 1024 tokens, for one more cast per layer when it is recomputed).
                    autocast_cache=not (checkpointing or already),
                )
                quiet_progress(
                    trainer, "importance"
                )  # a step bar, never the metrics dicts the Trainer prints
                trainer.train()
            finally:
                callback.detach()
                for p, flag in saved_requires_grad:
                    p.requires_grad_(flag)
                    p.grad = None
                model.train(was_training)
                if use_cache is not None:
                    model.config.use_cache = use_cache
                if checkpointing:
                    set_checkpointing(model, False)
                if trainer is not None:
                    trainer.accelerator.free_memory()  # drops the accelerate wrappers (DDP) around the model
                    del trainer
                if next(model.parameters()).device != original_device:
                    model.to(original_device)
        if callback.scores is None:
            raise RuntimeError("The Trainer run ended without finalising the importance scores.")
        self.last_stats = callback.stats
        return callback.scores
