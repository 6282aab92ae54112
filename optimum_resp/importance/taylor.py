"""First-order Taylor importance from the decode-only loss, collected through a `transformers.Trainer` run.

The importance of a structure is sum |W * dL/dW| over its weights (and bias entries): the
first-order estimate of the loss change when it is removed. The loss is RESP's: each sample's loss
is the mean cross-entropy over its labelled (decode) tokens, the loss of a set of samples the mean
over samples.

The gradients come from an ordinary `Trainer` run (its data loading, distributed sampler,
accelerate device placement and progress bar) whose optimizer step is a no-op, so the weights never
change. Per-parameter post-accumulate-grad hooks fold each gradient into per-structure
accumulators the moment it is ready and free it (`param.grad = None`), so peak memory stays near a
forward+backward pass with no stored gradients. Only the prunable linears require grad while
scoring. Under `torchrun` / `accelerate launch` every process scores its shard (gradients are not
synchronised: each backward stays local) and the accumulators are summed across processes at the
end, normalised so one process and several give the same scores on the same data.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments, modeling_utils

from ..loading import cpu_has_bf16_matmuls
from .base import (
    LayerScores,
    PrunableLinear,
    Scorer,
    Scores,
    ScoringStats,
    empty_scores,
    prunable_linears,
    register_scorer,
    structure_sums,
)
from .data import IGNORE_INDEX, CalibrationCollator, check_examples, quiet_progress

if TYPE_CHECKING:
    from ..configuration_resp import RESPConfig

# transformers releases with `slice_logits_to_keep` project only the True positions of a boolean
# (batch, seq) `logits_to_keep`; older ones (5.19, which vLLM pins) take a 1D tensor of positions.
_MASK_LOGITS_TO_KEEP = hasattr(modeling_utils, "slice_logits_to_keep")

__all__ = ["AbsAfter", "TaylorImportanceCallback", "TaylorScorer", "bf16_autocast_supported"]

logger = logging.getLogger(__name__)

# "batch": |W * g| after every backward (memory-light); "all": |W * mean g| once at the end (RESP reference).
AbsAfter = Literal["batch", "all"]
SAMPLE_WEIGHT = "sample_weight"


def _dist_world() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes in place (no-op without an initialised process group)."""
    if _dist_world() > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


class TaylorImportanceCallback(TrainerCallback):
    """Folds gradients of the prunable linears into per-structure Taylor importance during a Trainer run.

    Hooks are attached at train begin and removed at train end, where the accumulators are summed
    across processes and normalised; the result is in `scores` and `stats`. The trainer reports each
    batch's real-sample count through `begin_batch` before its backward.
    """

    def __init__(self, linears: Sequence[PrunableLinear], abs_after: AbsAfter = "batch") -> None:
        if abs_after not in ("batch", "all"):
            raise ValueError(f"abs_after must be 'batch' or 'all'; got {abs_after!r}.")
        self.linears = list(linears)
        self.abs_after = abs_after
        self.scores: Scores | None = None
        self.stats = ScoringStats()
        self._handles: list[Any] = []
        self._acc: list[dict[str, torch.Tensor]] = []
        self._grad_acc: dict[tuple[int, str], torch.Tensor] = {}
        self._batch_samples = 0.0
        self._samples = self._batches = self._tokens = self._loss_sum = 0.0
        self._positions = self._padding = 0
        self._start = 0.0
        self._device = torch.device("cpu")

    # -- hooks -------------------------------------------------------------------------------------
    def _make_hook(self, lin: PrunableLinear, key: tuple[int, str]):
        def hook(param: torch.Tensor) -> None:
            grad = param.grad
            if grad is not None:
                with torch.no_grad():
                    if self.abs_after == "batch":
                        taylor = (param.detach().float() * grad.float()).abs_()
                        self._acc[lin.layer][lin.structure] += structure_sums(taylor, lin.dim, lin.unit)
                    else:
                        # The batch loss is a mean over its real samples: scale back to a sum over samples.
                        self._grad_acc[key].add_(grad, alpha=self._batch_samples)
            param.grad = None  # freed at once: no gradient outlives its own hook

        return hook

    def attach(self, device: torch.device) -> None:
        """Zero the accumulators and register one post-accumulate-grad hook per prunable parameter."""
        self.detach()
        self._device = torch.device(device)
        self._acc = empty_scores(self.linears)
        for lin in self.linears:  # each accumulator lives with its layer (models spread over devices too)
            layer = self._acc[lin.layer]
            layer[lin.structure] = layer[lin.structure].to(lin.module.weight.device)
        self._grad_acc = {}
        self._samples = self._batches = self._tokens = self._loss_sum = 0.0
        self._positions = self._padding = 0
        for index, lin in enumerate(self.linears):
            for pname, param in lin.params:
                key = (index, pname)
                if self.abs_after == "all":
                    self._grad_acc[key] = torch.zeros_like(param, dtype=torch.float32)
                self._handles.append(param.register_post_accumulate_grad_hook(self._make_hook(lin, key)))
        if self._device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self._device)
        self._start = time.perf_counter()

    def detach(self) -> None:
        """Remove the hooks (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def begin_batch(
        self, num_samples: float, num_tokens: float, loss_sum: float, positions: int = 0, padding: int = 0
    ) -> None:
        """Record the real samples, scored tokens and summed per-sample loss of the batch about to backprop (and
        its positions, of which `padding` pad a shorter sequence to the longest)."""
        self._positions += positions
        self._padding += padding
        self._batch_samples = float(num_samples)
        self._samples += num_samples
        self._batches += 1.0 if num_samples > 0 else 0.0
        self._tokens += num_tokens
        self._loss_sum += loss_sum

    # -- Trainer events ----------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state, control, **kwargs):
        self.attach(args.device)

    def on_train_end(self, args: TrainingArguments, state, control, **kwargs):
        self.finalize(log=state.is_world_process_zero)

    def finalize(self, log: bool = True) -> Scores:
        """Remove hooks, sum accumulators across processes, normalise, and build the LayerScores."""
        self.detach()
        device = self._device
        counters = torch.tensor(
            [self._samples, self._batches, self._tokens, self._loss_sum], dtype=torch.float64, device=device
        )
        world = _dist_world()
        per_process = torch.zeros(world, dtype=torch.float64, device=device)
        per_process[torch.distributed.get_rank() if world > 1 else 0] = self._samples
        _all_reduce_sum(counters)
        _all_reduce_sum(per_process)
        samples, batches, tokens, loss_sum = counters.tolist()
        if samples == 0:
            raise RuntimeError("The Trainer run processed no calibration sample; nothing was scored.")

        if self.abs_after == "batch":
            # One collective for all per-structure accumulators, then the mean over backward passes.
            flat = torch.cat([acc.to(device) for layer in self._acc for acc in layer.values()])
            _all_reduce_sum(flat)
            flat /= batches
            offset = 0
            for layer in self._acc:
                for acc in layer.values():
                    acc.copy_(flat[offset : offset + acc.numel()])
                    offset += acc.numel()
        else:
            with torch.no_grad():
                for index, lin in enumerate(self.linears):
                    for pname, param in lin.params:
                        grad_sum = self._grad_acc.pop((index, pname))
                        _all_reduce_sum(grad_sum)
                        mean_grad = grad_sum.div_(samples)  # gradient of the mean-over-samples loss
                        taylor = (param.detach().float() * mean_grad).abs_()
                        self._acc[lin.layer][lin.structure] += structure_sums(taylor, lin.dim, lin.unit)
                        del grad_sum, mean_grad, taylor

        self.scores = [LayerScores(**{name: acc.cpu() for name, acc in layer.items()}) for layer in self._acc]
        self._acc, self._grad_acc = [], {}
        peak = None
        if self._device.type == "cuda":
            peak = int(torch.cuda.max_memory_allocated(self._device))
        self.stats = ScoringStats(
            num_samples=int(round(samples)),
            num_tokens=int(round(tokens)),
            num_batches=int(round(batches)),
            wall_time_s=time.perf_counter() - self._start,
            peak_memory_bytes=peak,
            mean_loss=loss_sum / samples,
            world_size=world,
            extra={
                "abs_after": self.abs_after,
                "samples_per_process": [int(n) for n in per_process.tolist()],
                "padding_fraction": self._padding / max(1, self._positions),  # this process's batches
            },
        )
        if log:
            logger.info(
                "Taylor importance (abs_after=%s): %d samples, %d scored tokens, %d backward passes on %d "
                "process(es), mean loss %.4f, %.1f s%s.",
                self.abs_after,
                self.stats.num_samples,
                self.stats.num_tokens,
                self.stats.num_batches,
                self.stats.world_size,
                self.stats.mean_loss,
                self.stats.wall_time_s,
                "" if peak is None else f", peak CUDA memory {peak / 2**30:.2f} GiB",
            )
        return self.scores


class _NoStepOptimizer(torch.optim.Optimizer):
    """An optimizer whose step does nothing, so the Trainer's loop runs and the weights never change."""

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        super().__init__(list(params), {"lr": 0.0})

    def step(self, closure=None):
        return None


class _Examples(torch.utils.data.Dataset):
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


def _set_checkpointing(model: nn.Module, on: bool) -> None:
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


class _TaylorTrainer(Trainer):
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
            self.optimizer = _NoStepOptimizer(params)
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


@register_scorer("taylor")
class TaylorScorer(Scorer):
    """First-order Taylor importance sum |W * dL/dW| per structure, L the decode-only (or full) token-mean loss.

    The forward pass runs under bf16 autocast when `bf16_autocast` (None: where `bf16_autocast_supported`);
    the gradients reach the weights in their own dtype either way. `abs_after="batch"` (default) adds |W * g_b| after every backward pass and averages over
    backward passes: memory-light, and with batch size 1 the mean over samples of per-sample
    importance. `abs_after="all"` keeps a float32 gradient sum per prunable weight and returns
    |W * mean_i g_i| (the RESP reference estimator; extra memory: 4 bytes per prunable parameter),
    independent of batching. `training_args` overrides any `TrainingArguments` field.
    """

    requires = "gradients"

    def __init__(
        self,
        abs_after: AbsAfter = "batch",
        batch_size: int = 1,
        progress: bool = True,
        seed: int = 0,
        training_args: Mapping[str, Any] | None = None,
        gradient_checkpointing: bool = False,
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

    @classmethod
    def from_config(cls, config: RESPConfig) -> TaylorScorer:
        return cls(
            abs_after=config.taylor_abs_after,
            batch_size=config.batch_size,
            seed=config.seed,
            # None (auto) is resolved by the pruner from its memory estimate before any work.
            gradient_checkpointing=bool(config.gradient_checkpointing),
            bf16_autocast=config.bf16_autocast,
        )

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
        checkpointing = self.gradient_checkpointing and not already
        autocast = bf16_autocast_supported(model) if self.bf16_autocast is None else self.bf16_autocast
        original_device = next(model.parameters()).device
        pad_token_id = getattr(model.config, "pad_token_id", None)
        collator = CalibrationCollator(0 if pad_token_id is None else pad_token_id)
        callback = TaylorImportanceCallback(linears, self.abs_after)
        trainer = None
        with tempfile.TemporaryDirectory(prefix="resp-taylor-") as tmp:
            args = self._arguments(output_dir or tmp)
            dataset = _Examples(examples, args.per_device_train_batch_size * max(args.world_size, 1))
            try:
                for p in model.parameters():
                    p.requires_grad_(id(p) in prunable)
                if checkpointing:
                    _set_checkpointing(model, True)
                trainer = _TaylorTrainer(
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
                    _set_checkpointing(model, False)
                if trainer is not None:
                    trainer.accelerator.free_memory()  # drops the accelerate wrappers (DDP) around the model
                    del trainer
                if next(model.parameters()).device != original_device:
                    model.to(original_device)
        if callback.scores is None:
            raise RuntimeError("The Trainer run ended without finalising the importance scores.")
        self.last_stats = callback.stats
        return callback.scores
