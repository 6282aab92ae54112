"""The Taylor collector: a `TrainerCallback` folding each gradient into per-structure importance as it is ready.

The importance of a structure is sum |W * dL/dW| over its weights (and bias entries): the first-order estimate
of the loss change when it is removed. Per-parameter post-accumulate-grad hooks fold each gradient into
per-structure accumulators the moment it is ready and free it (`param.grad = None`), so peak memory stays near a
forward+backward pass with no stored gradients. Under `torchrun` / `accelerate launch` every process collects
its shard and the accumulators are summed across processes at the end, normalised so one process and several
give the same scores on the same data. The Trainer that drives the passes is `no_step_trainer`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
from transformers import TrainerCallback, TrainingArguments

from .base import LayerScores, PrunableLinear, Scores, ScoringStats, empty_scores, structure_sums

__all__ = ["AbsAfter", "TaylorImportanceCallback"]

logger = logging.getLogger(__name__)

# "batch": |W * g| after every backward (memory-light); "all": |W * mean g| once at the end (RESP reference).
AbsAfter = Literal["batch", "all"]


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
