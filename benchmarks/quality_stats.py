"""The quality benchmark's statistics over a setting's seeds: mean, sd and a pooled Wilson interval, the stage
schedule the seeds cannot tell from the best, and answer length and effective speedup against dense."""

from __future__ import annotations

import statistics

from optimum_resp.evaluation import wilson_interval as wilson


def seeds_summary(runs: list[dict], split: str) -> dict:
    """Accuracy over the seeds' runs of one setting on one split: mean, sd (0 for one seed), pooled interval."""
    accs = [r["splits"][split]["accuracy"] for r in runs]
    pooled = "".join(r["splits"][split]["correct"] for r in runs)
    low, high = wilson(pooled.count("1"), len(pooled))
    return {
        "mean": statistics.fmean(accs),
        "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "low": low,
        "high": high,
        "seeds": len(runs),
        "tokens": statistics.fmean(r["splits"][split]["mean_generated_tokens"] for r in runs),
    }


def stage_choice(sweep: list[dict], split: str) -> tuple[dict, dict]:
    """(the schedule with the best mean accuracy on `split`, the fewest stages whose pooled 95% interval overlaps
    the best's): more stages cost a scoring pass each, so the default is the cheapest schedule the seeds cannot
    tell from the best."""
    summary = {s["num_stages"]: seeds_summary(s["runs"], split) for s in sweep}
    best = max(sweep, key=lambda s: summary[s["num_stages"]]["mean"])
    low = summary[best["num_stages"]]["low"]
    enough = min((s for s in sweep if summary[s["num_stages"]]["high"] >= low), key=lambda s: s["num_stages"])
    return best, enough


def tokens_per_answer(record: dict) -> float:
    """Mean generated tokens per answer over every evaluated problem of the run."""
    splits = record["splits"].values()
    return sum(s["mean_generated_tokens"] * s["n"] for s in splits) / sum(s["n"] for s in splits)


def effective(runs: list[dict], dense: dict) -> tuple[float, float, float]:
    """(tokens vs dense, decode speedup, effective speedup), means over the seeds' runs."""
    ratio = statistics.fmean(tokens_per_answer(r) / tokens_per_answer(dense) for r in runs)
    decode = statistics.fmean(r["decode_speedup"] for r in runs)
    eff = statistics.fmean(
        r["decode_speedup"] * tokens_per_answer(dense) / tokens_per_answer(r) for r in runs
    )
    return ratio, decode, eff
