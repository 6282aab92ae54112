"""Side-by-side speed of a dense and a pruned model: prefill, greedy decode, memory.

Dense and pruned runs are interleaved in one process so that machine noise hits both alike; the
speedup is the median of per-pair time ratios. The ideal speedup is linear weights read per
decoded token, dense over pruned (lm_head included; the embedding lookup reads one row only).
"""

from __future__ import annotations

import inspect
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["SpeedComparison", "compare_speed", "linear_weights"]


def linear_weights(model: nn.Module) -> int:
    """Weights read per decoded token: every nn.Linear weight, lm_head included."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def _weight_bytes(model: nn.Module) -> int:
    """Bytes of parameter storage, each tensor once (tied embeddings and lm_head count once)."""
    unique = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    return sum(unique.values())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def _prefill_seconds(model, input_ids: torch.Tensor) -> float:
    _sync(input_ids.device)
    start = time.perf_counter()
    model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    _sync(input_ids.device)
    return time.perf_counter() - start


def _cache_argument(model) -> str:
    """The forward's KV-cache keyword: `cache` (transformers >= 5.24) or `past_key_values` (before)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def _decode(model, prompt: torch.Tensor, new_tokens: int) -> tuple[float, int]:
    """Seconds per greedy token after the prompt's prefill, and the KV cache bytes at the end."""
    name = _cache_argument(model)
    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
    past, token = getattr(out, name), out.logits[:, -1:].argmax(-1)
    _sync(prompt.device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, use_cache=True, **{name: past})
        past, token = getattr(out, name), out.logits[:, -1:].argmax(-1)
    _sync(prompt.device)
    seconds = (time.perf_counter() - start) / new_tokens
    kv_bytes = sum(t.numel() * t.element_size() for layer in past.layers for t in (layer.keys, layer.values))
    return seconds, kv_bytes


@dataclass
class SpeedComparison:
    """Medians over repeats; speedups are medians of per-pair dense/pruned ratios."""

    ideal_speedup: float
    prefill_dense_s: float
    prefill_pruned_s: float
    prefill_speedup: float
    decode_dense_tokens_per_s: float
    decode_pruned_tokens_per_s: float
    decode_speedup: float
    dense_memory_bytes: int  # weights + KV cache after decoding
    pruned_memory_bytes: int
    dense_kv_bytes: int
    pruned_kv_bytes: int
    dense_peak_bytes: int | None = None  # CUDA allocator peak during decode
    pruned_peak_bytes: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def compare_speed(
    dense: nn.Module,
    pruned: nn.Module,
    prefill_tokens: int = 512,
    decode_tokens: int = 128,
    decode_prompt_tokens: int = 16,
    repeats: int = 3,
    seed: int = 0,
) -> SpeedComparison:
    """Interleaved dense/pruned timing of prefill (batch 1) and greedy decode with KV cache."""
    device = next(dense.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    vocab = dense.config.vocab_size
    prefill_ids = torch.randint(0, vocab, (1, prefill_tokens), generator=gen).to(device)
    prompt = torch.randint(0, vocab, (1, decode_prompt_tokens), generator=gen).to(device)
    models = {"dense": dense, "pruned": pruned}
    for model in models.values():  # warm-up
        _prefill_seconds(model, prefill_ids[:, : min(64, prefill_tokens)])
        _decode(model, prompt, 2)
    prefill = {k: [] for k in models}
    decode = {k: [] for k in models}
    kv, peak = {}, {}
    for _ in range(repeats):
        for name, model in models.items():
            prefill[name].append(_prefill_seconds(model, prefill_ids))
        for name, model in models.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds, kv[name] = _decode(model, prompt, decode_tokens)
            decode[name].append(seconds)
            if device.type == "cuda":
                peak[name] = torch.cuda.max_memory_allocated(device)

    def ratio(times: dict) -> float:
        return statistics.median(d / p for d, p in zip(times["dense"], times["pruned"]))

    return SpeedComparison(
        ideal_speedup=linear_weights(dense) / linear_weights(pruned),
        prefill_dense_s=statistics.median(prefill["dense"]),
        prefill_pruned_s=statistics.median(prefill["pruned"]),
        prefill_speedup=ratio(prefill),
        decode_dense_tokens_per_s=1 / statistics.median(decode["dense"]),
        decode_pruned_tokens_per_s=1 / statistics.median(decode["pruned"]),
        decode_speedup=ratio(decode),
        dense_memory_bytes=_weight_bytes(dense) + kv["dense"],
        pruned_memory_bytes=_weight_bytes(pruned) + kv["pruned"],
        dense_kv_bytes=kv["dense"],
        pruned_kv_bytes=kv["pruned"],
        dense_peak_bytes=peak.get("dense"),
        pruned_peak_bytes=peak.get("pruned"),
    )
