"""Memory: what a scoring pass will need (checked before any work), and freed heap handed back to the OS.

glibc keeps the blocks a process frees in its malloc arenas, so after a CPU vLLM engine (its copy of the
weights, its KV cache) or a scoring pass frees gigabytes, the resident set stays where it peaked, and the
next phase's allocations land beside that slack instead of in it: on the Qwen3-0.6B shape a prune that
generated through in-process vLLM engines climbed to 18.8 GiB against 6.4 GiB through transformers.
`malloc_trim(0)` returns the free pages; elsewhere (musl, macOS, Windows) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "ScoringMemoryError",
    "ScoringMemoryEstimate",
    "check_scoring_memory",
    "estimate_scoring_memory",
    "free_memory",
    "release_heap",
]


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_heap() -> bool:
    """Collect garbage, then return the process's free heap pages to the OS; False where unsupported."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class ScoringMemoryError(MemoryError, ValueError):
    """A scoring pass would need more memory than the device has free (bad input: the fix is a setting)."""


@dataclass(frozen=True)
class ScoringMemoryEstimate:
    """What one backward pass of a gradient scorer adds above the loaded model, for one batch shape."""

    batch_size: int
    sequence_length: int
    activation_bytes: int
    """Tensors autograd keeps from the forward pass for the backward pass (parameters not counted)."""
    transient_bytes: int
    """Held only during the backward pass: the logits' gradient, the largest weight gradient being folded
    into importance, one layer's activation gradients (and its recomputed activations with checkpointing)."""
    gradient_checkpointing: bool = False
    bf16_autocast: bool = False

    @property
    def peak_bytes(self) -> int:
        return self.activation_bytes + self.transient_bytes

    def describe(self) -> str:
        return (
            f"batch {self.batch_size} x {self.sequence_length} tokens: {_gib(self.peak_bytes)} "
            f"({_gib(self.activation_bytes)} kept for the backward pass, {_gib(self.transient_bytes)} of gradients"
            f"{' and recomputed activations' if self.gradient_checkpointing else ''})"
            f"{', forward under bf16 autocast' if self.bf16_autocast else ''}"
        )


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


PROBE_LENGTHS = (32, 64, 128)
"""Sequence lengths of the probe passes; the kept bytes are a quadratic in the length (the 4D attention mask
is length squared), so three points fix them exactly."""


def _kept_bytes(
    model: nn.Module, layers: nn.ModuleList, length: int, skip: set[int], bf16_autocast: bool = False
) -> tuple[int, int]:
    """Bytes autograd keeps for backward in one forward of 2 x `length` tokens (one row padded), each storage once:
    (inside the decoder layers, outside them: embeddings, final norm, logits and loss)."""
    storages: dict[int, int] = {}
    inside: set[int] = set()  # storages first saved while a decoder layer ran
    depth = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip:
            if depth[0] and ptr not in storages:
                inside.add(ptr)
            storages[ptr] = max(storages.get(ptr, 0), storage.nbytes())
        # Detached: a tensor saved with its own grad_fn would close a reference cycle that is never freed.
        # Held until the graph goes, so no two saved tensors share an address while they are counted.
        return t.detach()

    def enter(*_):
        depth[0] += 1

    def leave(*_):
        depth[0] -= 1

    handles = [
        h
        for layer in layers
        for h in (layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave))
    ]
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)
    mask[1, -1] = 0  # a padded row: the attention-mask path real batches take
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_autocast)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with autocast:  # its bf16 weight copies are saved for backward too: counted
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    finally:
        for handle in handles:
            handle.remove()
    del logits
    body = sum(storages[ptr] for ptr in inside)
    return body, sum(storages.values()) - body


def _quadratic(lengths: list[int], values: list[float], length: int) -> float:
    """`values` measured at the probe `lengths`, evaluated at `length` (a quadratic through three points, or the
    nearest measurement scaled linearly when there are fewer)."""
    if len(lengths) < len(PROBE_LENGTHS):
        return values[-1] * length / lengths[-1]
    x = torch.tensor(lengths, dtype=torch.float64)
    coeffs = torch.linalg.solve(
        torch.stack([torch.ones_like(x), x, x**2], 1), torch.tensor(values, dtype=torch.float64)
    )
    coeffs = coeffs.clamp(min=0)  # a tiny negative curvature from rounding must not shrink the estimate
    return float(coeffs @ torch.tensor([1.0, length, length**2], dtype=torch.float64))


def estimate_scoring_memory(
    model: nn.Module,
    batch_size: int,
    sequence_length: int,
    gradient_checkpointing: bool = False,
    bf16_autocast: bool = False,
) -> ScoringMemoryEstimate:
    """Peak memory a Taylor scoring backward adds above the loaded `model`, for `batch_size` padded sequences of
    `sequence_length` tokens.

    What autograd keeps is measured, not modelled: three short probe forwards (no backward) count the bytes of
    every tensor saved for backward (each storage once, the model's own parameters excluded), inside the
    decoder layers and outside them, which fixes the quadratic in the length exactly for this model, dtype,
    device and attention backend; it is then evaluated at `sequence_length`. With gradient checkpointing the
    layers keep only their inputs and one layer's activations are recomputed at a time; the head (logits and
    loss) is kept as measured. The backward's transient tensors are added from the shapes. Every position is
    assumed scored (an upper bound for decode-only loss, whose prompt logits are never computed).
    """
    from .architectures import get_architecture, layer_sizes
    from .importance.base import prunable_linears

    linears = prunable_linears(model)
    layers = model.get_submodule(get_architecture(model).layers_path)
    prunable = {id(p) for lin in linears for _, p in lin.params}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    was_training = model.training
    try:
        model.eval()
        for p in model.parameters():  # what requires grad while scoring: the prunable linears only
            p.requires_grad_(id(p) in prunable)
        lengths = [t for t in PROBE_LENGTHS if t < sequence_length] or [sequence_length]
        kept = [_kept_bytes(model, layers, t, skip, bf16_autocast) for t in lengths]
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
        model.train(was_training)
    # Per sequence (the probe runs two).
    body = _quadratic(lengths, [b / 2 for b, _ in kept], sequence_length) * batch_size
    head = _quadratic(lengths, [h / 2 for _, h in kept], sequence_length) * batch_size
    config = model.config
    dtype = next(model.parameters()).dtype
    element = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    logits_element = 2 if bf16_autocast else element
    tokens = batch_size * sequence_length
    vocab = model.get_output_embeddings().weight.shape[0]
    widest = max(
        *(s.intermediate_size for s in layer_sizes(config)), config.hidden_size
    )  # per_layer: the widest
    largest_weight = max(lin.module.weight.numel() for lin in linears)
    transient = (
        tokens
        * vocab
        * (4 + logits_element)  # the logits' gradient: float32 (the loss) and the logits' dtype
        + largest_weight * (element + (4 if element == 4 else 12))  # grad, float copies, |W * g|
        + 3 * tokens * widest * element  # one layer's activation gradients
    )
    if gradient_checkpointing:  # each layer keeps its input; one layer's activations are recomputed at a time
        transient += body / len(layers)
        body = len(layers) * tokens * config.hidden_size * element
    return ScoringMemoryEstimate(
        batch_size,
        sequence_length,
        int(body + head),
        int(transient),
        gradient_checkpointing,
        bf16_autocast,
    )


def free_memory(device: torch.device | str) -> int | None:
    """Bytes free for new tensors on `device` (CUDA: the driver's free memory; CPU: the OS's available memory)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    return None


HEADROOM = 1.1
"""A pass is run only if 1.1x its estimate fits: the allocator's fragmentation and the Trainer's own buffers are
not in the estimate (on the 0.6B shape the estimate came to 1.03x of the measured peak in float32 and 1.12x under
bf16 autocast in benchmarks/bench_memory.py)."""


def check_scoring_memory(
    model: nn.Module,
    batch_size: int,
    sequence_length: int,
    gradient_checkpointing: bool | None = None,
    reserve_bytes: int = 0,
    bf16_autocast: bool = False,
) -> ScoringMemoryEstimate:
    """The scoring pass's memory, checked against the free memory before any work; `reserve_bytes` is what other
    phases still hold beside it (e.g. the dense model kept while its pruned copy is scored).

    `gradient_checkpointing=None` chooses: off when the plain pass fits (it is faster), on when only the
    checkpointed one does. The returned estimate says which (`.gradient_checkpointing`). A pass that cannot
    fit either way is refused with the estimate and the fixes.
    """
    device = next(model.parameters()).device
    free = free_memory(device)
    estimate = estimate_scoring_memory(
        model, batch_size, sequence_length, bool(gradient_checkpointing), bf16_autocast
    )
    if gradient_checkpointing is None and free is not None and not _fits(estimate, reserve_bytes, free):
        plain = estimate
        estimate = estimate_scoring_memory(model, batch_size, sequence_length, True, bf16_autocast)
        if _fits(estimate, reserve_bytes, free):
            logger.info(
                "Gradient checkpointing on for scoring: the plain pass needs about %s, too much for the %s free on %s.",
                _gib(plain.peak_bytes + reserve_bytes),
                _gib(free),
                device,
            )
    if free is None:
        return estimate
    logger.info(
        "Scoring memory estimate: %s above the model; %s free on %s.", estimate.describe(), _gib(free), device
    )
    if not _fits(estimate, reserve_bytes, free):
        fixes = [
            "a smaller batch_size (--batch-size)",
            "shorter traces (max_length, generation.max_new_tokens)",
        ]
        if not estimate.gradient_checkpointing:
            fixes.append("gradient checkpointing (leave gradient_checkpointing unset, or set it True)")
        reserve = f" plus {_gib(reserve_bytes)} for the pruned copy of the model" if reserve_bytes else ""
        raise ScoringMemoryError(
            f"The importance (scoring) pass would need about {estimate.describe()}{reserve}, but {device} has "
            f"{_gib(free)} free (with {HEADROOM - 1:.0%} headroom). Nothing was run. Try {', '.join(fixes)}."
        )
    return estimate


def _fits(estimate: ScoringMemoryEstimate, reserve_bytes: int, free: int) -> bool:
    return estimate.peak_bytes * HEADROOM + reserve_bytes <= free
