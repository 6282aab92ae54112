"""Where a prune's time and memory go: each phase (generation, scoring, allocation, surgery, checkpoint)
timed, with the peak memory the process reached during it.

Peak memory is the CUDA allocator's peak on a GPU (reset at the start of each phase) and, on a CPU, the
process's peak resident set (Linux's VmHWM, reset through /proc/self/clear_refs); where neither can be
reset, it is left out rather than reported as a lifetime peak.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["PhaseClock", "PhaseCost", "peak_memory_supported"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class PhaseCost:
    """One phase: wall seconds, peak memory in bytes (None where it cannot be measured), tokens it handled."""

    seconds: float
    peak_memory_bytes: int | None = None
    tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhaseCost:
        return cls(**{k: d.get(k) for k in ("seconds", "peak_memory_bytes", "tokens")})


def _reset_cpu_peak() -> bool:
    try:
        _CLEAR_REFS.write_text(
            "5"
        )  # Linux >= 4.0: reset the peak resident set size (VmHWM) to the current one
        return True
    except OSError:
        return False


def _cpu_peak() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_memory_supported(device: torch.device | str = "cpu") -> bool:
    """Whether a phase's peak memory can be measured on `device` here."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available()
    return _reset_cpu_peak() and _cpu_peak() is not None


class PhaseClock:
    """Times named phases: `with clock("scoring") as cost: ...; cost.tokens = n`; `clock.take()` returns and
    clears what was measured, in order, as {name: PhaseCost} (a repeated name adds up)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._costs: dict[str, PhaseCost] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[PhaseCost]:
        cuda = self.device.type == "cuda" and torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            measurable = True
        else:
            measurable = _reset_cpu_peak()
        cost = PhaseCost(seconds=0.0)
        start = time.perf_counter()
        try:
            yield cost
        finally:
            if cuda:
                torch.cuda.synchronize(self.device)
            cost.seconds = time.perf_counter() - start
            if measurable:
                cost.peak_memory_bytes = torch.cuda.max_memory_allocated(self.device) if cuda else _cpu_peak()
            self._add(name, cost)

    def _add(self, name: str, cost: PhaseCost) -> None:
        if name not in self._costs:
            self._costs[name] = cost
            return
        old = self._costs[name]
        peaks = [p for p in (old.peak_memory_bytes, cost.peak_memory_bytes) if p is not None]
        tokens = [t for t in (old.tokens, cost.tokens) if t is not None]
        self._costs[name] = PhaseCost(
            old.seconds + cost.seconds, max(peaks) if peaks else None, sum(tokens) if tokens else None
        )

    def take(self) -> dict[str, PhaseCost]:
        costs, self._costs = self._costs, {}
        return costs
