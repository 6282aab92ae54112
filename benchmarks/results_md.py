"""Each benchmark script owns one block of benchmarks/RESULTS.md, between its own markers."""

from __future__ import annotations

from pathlib import Path

from optimum_resp.files import atomic_write

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = (
    "# Benchmark results\n\nWritten by the scripts in benchmarks/; each owns the block between its markers.\n"
)


def write_results(section: str, text: str, path: Path = RESULTS) -> None:
    """Replace (or append) the block `section`, atomically, leaving the other scripts' blocks alone."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    current = path.read_text() if path.exists() else HEADER
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in current and end in current:
        current = current[: current.index(start)] + block + current[current.index(end) + len(end) :]
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    atomic_write(path, current)
