"""`evaluate` metric scripts shipped with optimum-resp (load them with ``evaluate.load(metric_path())``)."""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent


def metric_path(name: str = "resp_math_accuracy") -> str:
    """Local folder of a bundled metric, for offline ``evaluate.load(metric_path())`` (a bare name hits the Hub)."""
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        known = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"Unknown bundled metric {name!r}; available: {known}")
    return str(path)


__all__ = ["METRICS_DIR", "metric_path"]
