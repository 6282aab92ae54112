"""Tests for the benchmark scripts' own machinery (not their measurements)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench_quality(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "benchmarks" / "bench_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RUNS", tmp_path / "runs")
    return module


@pytest.fixture
def settings(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "config.json").write_text("{}")
    for name in ("train.jsonl", "test.jsonl"):
        (tmp_path / name).write_text('{"question": "q", "answer": "#### 1"}\n')
    return argparse.Namespace(
        model=str(model),
        train_data=str(tmp_path / "train.jsonl"),
        test_data=str(tmp_path / "test.jsonl"),
        num_prompts=8,
        eval_limit=10,
        max_new_tokens=16,
        seed=0,
        threads=1,
        quick=False,
    )


def test_run_record_is_named_by_everything_that_decides_the_result(bench_quality, settings):
    path = bench_quality.run_record_path
    base = path(settings, "resp", 0.4, {})
    assert base == path(settings, "resp", 0.4, {})
    assert base.parent == bench_quality.RUNS and base.name.startswith("resp-0.40-")
    assert base != path(settings, "resp", 0.4, {"num_stages": 8})
    assert base != path(settings, "resp", 0.3, {})
    assert base != path(settings, "magnitude", 0.4, {})
    assert base != path(argparse.Namespace(**{**vars(settings), "seed": 1}), "resp", 0.4, {})
    quick = path(argparse.Namespace(**{**vars(settings), "quick": True}), "resp", 0.4, {})
    assert quick.parent == bench_quality.RUNS / "quick"  # smoke runs stay out of the kept (committed) records
    (Path(settings.model) / "model.safetensors").write_bytes(b"other weights")  # a retrained model
    assert base != path(settings, "resp", 0.4, {})


def test_stopped_benchmark_resumes_from_the_kept_records(bench_quality, settings, monkeypatch):
    record = {"method": "resp", "target": 0.4, "accuracy": 0.5, "wall_seconds": 12.0}
    path = bench_quality.run_record_path(settings, "resp", 0.4, {"num_stages": 8})
    path.parent.mkdir()
    path.write_text(json.dumps(record))

    def no_worker(*args, **kwargs):
        raise AssertionError("a kept run must not be run again")

    monkeypatch.setattr(bench_quality.subprocess, "run", no_worker)
    assert bench_quality.run_one(settings, "resp", 0.4, {"num_stages": 8}) == record
    with pytest.raises(AssertionError, match="must not be run again"):  # a different run is not kept
        bench_quality.run_one(settings, "resp", 0.4, {})


@pytest.mark.usefixtures("one_thread")
def test_prune_cost_benchmark_times_every_phase_and_writes_its_block(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        "bench_prune_cost", REPO / "benchmarks" / "bench_prune_cost.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(
        module, "write_results", lambda section, text: results.write_text(f"{section}\n{text}")
    )
    args = ["--shape", "tiny", "--prompts", "2", "--prompt-tokens", "8", "--new-tokens", "4", "--stages", "2"]
    module.main([*args, "--generators", "hf"])
    text = results.read_text()
    assert text.startswith("prune-cost-cpu\n")
    for phase in (
        "dense generation",
        "regeneration",
        "scoring",
        "allocation",
        "surgery",
        "checkpoint",
        "export",
    ):
        assert f"| {phase} |" in text
    # Two stages from 0 to 40%: the dense round, one regeneration (at 20% >= the 10% and 20% milestones).
    assert "| dense generation | 1 |" in text and "| regeneration | 1 |" in text and "| scoring | 2 |" in text
    assert "s per 1k tokens" in text and "reference schedule (112 passes + 6 generation rounds)" in text
    assert re.search(
        r"the prune estimated [\d.]+ GiB above the loaded model before any work \(batch 4 x", text
    )
