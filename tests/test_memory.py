"""`release_heap`: freed heap goes back to the OS (what keeps a prune's CPU vLLM rounds from piling up)."""

from __future__ import annotations

import platform

import pytest

from optimum_resp.memory import release_heap


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(
    platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc", reason="glibc only"
)
def test_release_heap_returns_freed_blocks_that_malloc_keeps():
    # 64 KiB blocks come from the heap (below glibc's mmap threshold); the last one stays alive, so the free
    # space below it cannot shrink the heap from the top and stays resident until malloc_trim.
    blocks = [bytearray(b"x" * (64 * 1024)) for _ in range(2048)]  # 128 MiB, touched
    keep = blocks[-1]
    before = _rss_bytes()
    del blocks
    held = _rss_bytes()
    assert held > before - 32 * 2**20  # free() gave (almost) nothing back
    assert release_heap() is True
    assert _rss_bytes() < held - 96 * 2**20  # most of the 128 MiB is back with the OS
    assert len(keep) == 64 * 1024
