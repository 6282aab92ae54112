"""Per-input-feature activation statistics of the prunable linears, from forward passes over calibration data.

Activation-based criteria (Wanda-sp, FLAP) need, for every input feature j of a linear, the norm
||X_j||_2, the mean and the variance of that feature over calibration tokens. `collect_input_stats`
runs the model over the examples (batched with `CalibrationCollator`, under `torch.inference_mode`,
on the model's device) with forward pre-hooks on the requested linears, and folds each batch into
float64 accumulators: count, sum of squares, and mean plus sum of squared deviations merged with
Chan et al.'s parallel update, so the variance stays accurate over millions of tokens. Linears fed
the same input tensor (q/k/v, gate/up) reduce it once.

Which tokens count: ``positions="labelled"`` (default) uses only positions whose label is not -100,
i.e. with decode-only examples the tokens of the model's own reasoning trace, the activations seen
while it decodes (RESP's decode-only idea); ``positions="all"`` uses every non-padding token.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from ..validation import check_int
from .base import PrunableLinear, ScoringConfig, ScoringStats, prunable_linears
from .data import IGNORE_INDEX, CalibrationCollator, check_examples

__all__ = ["POSITIONS", "ActivationScoringConfig", "FeatureStats", "Positions", "collect_input_stats"]

logger = logging.getLogger(__name__)

Positions = Literal["labelled", "all"]
POSITIONS = ("labelled", "all")

# Rows of a hooked input converted to float64 at once: bounds the temporary memory per linear.
_CHUNK_ELEMENTS = 1 << 24


@dataclass
class ActivationScoringConfig(ScoringConfig):
    """The settings of the activation criteria (Wanda-sp, FLAP): examples per forward pass."""

    batch_size: int = 4
    """Examples per forward pass (sequences of similar length share a batch, longest first)."""

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size)


@dataclass
class FeatureStats:
    """Running float64 statistics of each input feature of one linear over the counted tokens."""

    count: int
    mean: torch.Tensor  # [in_features]
    m2: torch.Tensor  # sum of squared deviations from the mean, [in_features]
    sumsq: torch.Tensor  # sum of squares, [in_features]

    @classmethod
    def zeros(cls, features: int, device: torch.device | str = "cpu") -> FeatureStats:
        """Empty accumulators for a linear with `features` inputs."""
        zeros = dict(dtype=torch.float64, device=device)
        return cls(
            0, torch.zeros(features, **zeros), torch.zeros(features, **zeros), torch.zeros(features, **zeros)
        )

    def update(self, rows: torch.Tensor) -> None:
        """Fold a [tokens, features] block into the statistics (in float64)."""
        if rows.shape[0] == 0:
            return
        rows = rows.double()
        mean = rows.mean(dim=0)
        block = FeatureStats(
            rows.shape[0], mean, (rows - mean).square_().sum(dim=0), rows.square().sum(dim=0)
        )
        self.merge(block)

    def merge(self, other: FeatureStats) -> None:
        """Combine with statistics of other tokens (Chan et al.'s numerically stable parallel update)."""
        n_a, n_b = self.count, other.count
        if n_b == 0:
            return
        n = n_a + n_b
        delta = other.mean.to(self.mean.device) - self.mean
        self.mean += delta * (n_b / n)
        self.m2 += other.m2.to(self.m2.device) + delta.square_() * (n_a * n_b / n)
        self.sumsq += other.sumsq.to(self.sumsq.device)
        self.count = n

    @property
    def sum(self) -> torch.Tensor:
        """Sum of each feature over the counted tokens."""
        return self.mean * self.count

    @property
    def norm(self) -> torch.Tensor:
        """||X_j||_2 over the counted tokens (Wanda's activation norm)."""
        return self.sumsq.sqrt()

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased sample variance of each feature (FLAP's fluctuation); zero with fewer than two tokens."""
        if self.count < 2:
            return torch.zeros_like(self.m2)
        return self.m2 / (self.count - 1)

    def to(self, device: torch.device | str) -> FeatureStats:
        """A copy on `device` (plain tensors, usable outside inference mode)."""
        return FeatureStats(
            self.count,
            self.mean.to(device).clone(),
            self.m2.to(device).clone(),
            self.sumsq.to(device).clone(),
        )


def _make_hook(stats: FeatureStats, state: dict[str, Any], name: str):
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        cached = state.get("last")
        if cached is not None and cached[0] is x:  # q/k/v (gate/up) share one input: reduce it once
            stats.merge(cached[1])
            return
        mask: torch.Tensor = state["mask"]
        features = x.shape[-1]
        flat = x.reshape(-1, features)
        if flat.shape[0] != mask.numel():
            raise RuntimeError(
                f"{name} received {flat.shape[0]} token rows but the batch has {mask.numel()} positions; "
                "activation statistics need the model to keep the (batch, sequence) layout in its linears."
            )
        selected = flat[mask.to(flat.device)]
        block = FeatureStats.zeros(features, flat.device)
        chunk = max(1, _CHUNK_ELEMENTS // max(features, 1))
        for start in range(0, selected.shape[0], chunk):
            block.update(selected[start : start + chunk])
        stats.merge(block)
        # Holding `x` keeps it alive, so the identity test cannot match a new tensor in recycled memory.
        state["last"] = (x, block)

    return hook


def collect_input_stats(
    model: nn.Module,
    examples: Sequence[Mapping[str, Sequence[int]]],
    linears: Sequence[PrunableLinear] | None = None,
    positions: Positions = "labelled",
    batch_size: int = 1,
    progress: bool = True,
) -> tuple[dict[tuple[int, str], FeatureStats], ScoringStats]:
    """Input-feature statistics of `linears` (default: every prunable linear) over the calibration tokens.

    Returns ``{(layer, module_path): FeatureStats}`` (on CPU) and a `ScoringStats` describing the
    run (`num_tokens`: the tokens counted). The model's train/eval mode is restored afterwards.
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}; got {positions!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}.")
    examples = check_examples(examples)
    linears = list(prunable_linears(model) if linears is None else linears)
    if not linears:
        raise ValueError("No linear to collect activation statistics for.")
    device = next(model.parameters()).device
    pad_token_id = getattr(model.config, "pad_token_id", None)
    collator = CalibrationCollator(0 if pad_token_id is None else pad_token_id)
    forward_kwargs: dict[str, Any] = {"use_cache": False}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        forward_kwargs["logits_to_keep"] = 1  # the vocabulary projection is not needed: one position only

    state: dict[str, Any] = {}
    handles = []
    was_training = model.training
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    num_tokens = num_batches = 0
    try:
        model.eval()
        with torch.inference_mode():
            stats = {
                (lin.layer, lin.module_path): FeatureStats.zeros(
                    lin.module.weight.shape[1], lin.module.weight.device
                )
                for lin in linears
            }
            for lin in linears:
                key = (lin.layer, lin.module_path)
                hook = _make_hook(stats[key], state, f"Layer {lin.layer} {lin.module_path}")
                handles.append(lin.module.register_forward_pre_hook(hook))
            batches = range(0, len(examples), batch_size)
            for first in tqdm(batches, desc=f"Activation statistics ({positions})", disable=not progress):
                batch = collator(examples[first : first + batch_size])
                if positions == "labelled":
                    mask = batch["labels"].ne(IGNORE_INDEX) & batch["attention_mask"].bool()
                else:
                    mask = batch["attention_mask"].bool()
                state["mask"] = mask.reshape(-1).to(device)
                model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    **forward_kwargs,
                )
                state.pop("last", None)
                num_tokens += int(mask.sum())
                num_batches += 1
        result = {key: value.to("cpu") for key, value in stats.items()}
    finally:
        state.clear()  # drops the last batch's activations
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if num_tokens == 0:
        raise ValueError(
            f"No token was counted with positions={positions!r}: the examples have no labelled position. "
            "Use positions='all', or labels equal to input_ids on the completion tokens."
        )
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    run = ScoringStats(
        num_samples=len(examples),
        num_tokens=num_tokens,
        num_batches=num_batches,
        wall_time_s=time.perf_counter() - start,
        peak_memory_bytes=peak,
        extra={"positions": positions},
    )
    logger.info(
        "Activation statistics: %d samples, %d %s tokens, %d forward passes, %.1f s.",
        run.num_samples,
        run.num_tokens,
        positions,
        run.num_batches,
        run.wall_time_s,
    )
    return result, run
