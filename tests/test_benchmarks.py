"""Tests for the benchmark scripts' own machinery (not their measurements)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench_quality(tmp_path, monkeypatch):
    """The quality benchmark's command line (its records, statistics and rendering are modules beside it), with
    its records kept under tmp_path."""
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "benchmarks" / "bench_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys.modules["quality_records"], "RUNS", tmp_path / "runs")
    return module


@pytest.fixture
def records(bench_quality):
    return sys.modules["quality_records"]


@pytest.fixture
def stats(bench_quality):
    return sys.modules["quality_stats"]


@pytest.fixture
def rendering(bench_quality):
    return sys.modules["quality_render"]


@pytest.fixture
def settings(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "config.json").write_text("{}")
    for name in ("train.jsonl", "test.jsonl", "hard.jsonl"):
        (tmp_path / name).write_text('{"question": "q", "answer": "#### 1"}\n')
    return argparse.Namespace(
        model=str(model),
        train_data=str(tmp_path / "train.jsonl"),
        eval_data={"test": str(tmp_path / "test.jsonl"), "hard": str(tmp_path / "hard.jsonl")},
        num_prompts=8,
        eval_limit=10,
        max_new_tokens=16,
        seeds=[0, 1],
        threads=1,
        quick=False,
        plan=False,
        kept={},
        to_run={},
    )


def test_run_record_is_named_by_everything_that_decides_the_result(records, settings):
    path = records.run_record_path
    base = path(settings, "resp", 0.4, {}, 0)
    assert base == path(settings, "resp", 0.4, {}, 0)
    assert base.parent == records.RUNS and base.name.startswith("resp-0.40-s0-")
    assert base != path(settings, "resp", 0.4, {"num_stages": 8}, 0)
    assert base != path(settings, "resp", 0.3, {}, 0)
    assert base != path(settings, "magnitude", 0.4, {}, 0)
    assert base != path(settings, "resp", 0.4, {}, 1)
    quick = path(argparse.Namespace(**{**vars(settings), "quick": True}), "resp", 0.4, {}, 0)
    assert quick.parent == records.RUNS / "quick"  # smoke runs stay out of the kept (committed) records
    Path(settings.eval_data["hard"]).write_text('{"question": "q2", "answer": "#### 2"}\n')  # other eval data
    assert base != path(settings, "resp", 0.4, {}, 0)
    before = path(settings, "resp", 0.4, {}, 0)
    (Path(settings.model) / "model.safetensors").write_bytes(b"other weights")  # a retrained model
    assert before != path(settings, "resp", 0.4, {}, 0)


def test_stopped_benchmark_resumes_from_the_kept_records(records, settings, monkeypatch):
    record = {"method": "resp", "target": 0.4, "accuracy": 0.5, "wall_seconds": 12.0}
    path = records.run_record_path(settings, "resp", 0.4, {"num_stages": 8}, 1)
    path.parent.mkdir()
    path.write_text(json.dumps(record))

    def no_worker(*args, **kwargs):
        raise AssertionError("a kept run must not be run again")

    monkeypatch.setattr(records.subprocess, "run", no_worker)
    assert records.run_one(settings, "resp", 0.4, {"num_stages": 8}, seed=1) == record
    with pytest.raises(AssertionError, match="must not be run again"):  # another seed is another run
        records.run_one(settings, "resp", 0.4, {"num_stages": 8}, seed=0)
    # an override equal to the keyed reference is the reference run (the stage sweep's point and the table's row)
    reference = records.run_record_path(settings, "resp", 0.4, {}, 0)
    reference.write_text(json.dumps(dict(record, seed=0)))
    assert records.run_one(settings, "resp", 0.4, {"num_stages": 4})["seed"] == 0


def test_a_changed_library_default_re_keys_only_the_runs_it_changes(records, monkeypatch):
    canonical, today = records.canonical_overrides, records.RESPConfig().num_stages
    # records keyed when the default was 2 stages; the library's default is now `today`
    monkeypatch.setattr(records, "KEY_DEFAULTS", {"num_stages": 2})
    assert canonical("resp", {}) == {"num_stages": today} == canonical("resp", {"num_stages": today})
    assert canonical("resp", {"num_stages": 2}) == {}  # the old default stays addressable
    assert canonical("resp", {"recovery": "lora"}) == {"num_stages": today, "recovery": "lora"}
    assert canonical("resp-no-regen", {}) == {"num_stages": today}
    assert canonical("wanda-sp", {}) == {}  # its preset sets its own stages (one shot): not re-keyed
    assert canonical("flap", {"allocation": "uniform"}) == {"allocation": "uniform"}
    # the worker builds what the key names
    assert records.keyed_config("resp", {}).num_stages == 2
    assert records.keyed_config("resp", canonical("resp", {})).num_stages == today


def test_plan_lists_kept_runs_and_runs_left_without_running_any(
    bench_quality, records, monkeypatch, capsys, tmp_path
):
    def no_worker(*args, **kwargs):
        raise AssertionError("--plan must not run anything")

    monkeypatch.setattr(records.subprocess, "run", no_worker)
    monkeypatch.setattr(bench_quality, "write_results", no_worker)
    monkeypatch.setattr(bench_quality, "HERE", tmp_path)  # where quality.json would go
    argv = ["--quick", "--eval-splits", "test", "--plan"]
    bench_quality.main(argv)
    lines = capsys.readouterr().out.splitlines()
    # --quick: dense, resp (2 seeds) and magnitude at 30%, resp uniform (2 seeds), the 2-stage sweep (2 seeds),
    # LoRA, distillation (2 seeds) and the params normalization: 12 runs, none kept yet
    assert lines[-1] == "0 runs kept, 12 to run"
    assert sum(line.endswith(": to run") for line in lines) == 12
    args = bench_quality.resolve(bench_quality.parse_args(argv))
    kept = records.run_record_path(args, "magnitude", 0.3, {}, 0)
    kept.parent.mkdir(parents=True)
    kept.write_text(json.dumps({"method": "magnitude", "wall_seconds": 360.0}))
    bench_quality.main(argv)
    out = capsys.readouterr().out
    assert f"magnitude      0.30 seed 0 {{}}: kept from {kept.name}" in out
    assert out.splitlines()[-1] == "1 runs kept, 11 to run (about 1.1 h at the kept runs' mean of 6.0 min)"
    assert not (tmp_path / "quality.json").exists()


def _run(accuracy: float, correct: str, tokens: float, speedup: float = 1.0) -> dict:
    return {
        "splits": {
            "test": {
                "accuracy": accuracy,
                "correct": correct,
                "n": len(correct),
                "mean_generated_tokens": tokens,
            }
        },
        "decode_speedup": speedup,
    }


def test_seed_statistics_pool_the_problems_and_effective_speedup_counts_longer_answers(stats, rendering):
    runs = [_run(0.5, "1100", 100.0, 1.5), _run(1.0, "1111", 200.0, 1.5)]
    summary = stats.seeds_summary(runs, "test")
    assert summary["mean"] == 0.75 and summary["seeds"] == 2
    assert summary["sd"] == pytest.approx(0.3536, abs=1e-4)
    assert (summary["low"], summary["high"]) == stats.wilson(6, 8)  # 6 of the 8 pooled problems
    assert summary["low"] < 0.75 < summary["high"]
    dense = _run(1.0, "1111", 100.0)
    ratio, decode, eff = stats.effective(runs, dense)
    assert ratio == pytest.approx(1.5)  # (1.0 + 2.0) / 2
    assert decode == 1.5 and eff == pytest.approx((1.5 + 0.75) / 2)  # twice the tokens halve the speedup
    assert rendering.cell(runs[:1], "test", interval=False) == "0.500"  # one seed: no sd
    assert "±" in rendering.cell(runs, "test")


def test_quality_benchmark_refuses_settings_it_cannot_render(bench_quality):
    args = bench_quality.parse_args(["--methods", "resp", "nope"])
    with pytest.raises(SystemExit, match=r"unknown methods \['nope'\]"):
        bench_quality.resolve(args)
    args = bench_quality.parse_args(["--methods", "resp", "magnitude"])
    with pytest.raises(SystemExit, match="--no-ssgr"):
        bench_quality.resolve(args)
    args = bench_quality.resolve(
        bench_quality.parse_args(["--methods", "resp", "--no-ssgr", "--seeded-methods", "resp"])
    )
    # the shipped data by default: three evaluation splits, the held-out frames primary
    assert (
        list(args.eval_data) == ["test", "held_out_frames", "hard"]
        and args.primary_split == "held_out_frames"
    )
    assert args.train_data.endswith("gsm8k_train.jsonl")
    only = bench_quality.resolve(bench_quality.parse_args(["--eval-splits", "hard", "test", "--no-ssgr"]))
    assert list(only.eval_data) == ["hard", "test"] and only.primary_split == "hard"


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


def test_quality_tables_and_plot_render_from_records(bench_quality, rendering, tmp_path):
    args = bench_quality.resolve(
        bench_quality.parse_args(["--quick", "--eval-splits", "test", "--seeded-methods", "resp"])
    )
    dense = dict(_run(1.0, "1111", 100.0), parameters=10, wall_seconds=1.0)
    for split in dense["splits"].values():
        split.update(ci_low=0.5, ci_high=1.0)

    def setting(method, runs, **extra):
        runs = [
            dict(
                r,
                wall_seconds=2.0,
                prune_seconds=1.0,
                kept={"query_heads": 1, "kv_heads": 1, "channels": 0.5},
            )
            for r in runs
        ]
        for r in runs:
            r["splits"]["test"].update(ci_low=0.1, ci_high=0.9)
        return dict(method=method, target=0.3, overrides={}, runs=runs, **extra)

    data = dict(
        dense=dense,
        grid=[
            setting("resp", [_run(0.5, "1100", 120.0, 1.4), _run(0.75, "1110", 100.0, 1.4)]),
            setting("magnitude", [_run(0.25, "1000", 300.0, 1.4)]),
        ],
        uniform=[setting("resp", [_run(0.5, "1100", 100.0, 1.5)] * 2)],
        ssgr=[],
        sweep=[dict(setting("resp", [_run(0.5, "1100", 100.0)] * 2), num_stages=2)],
        lora=[],
        fractions=[],
        norms=[],
    )
    distilled = [
        dict(
            _run(0.75, "1110", 100.0),
            recovery={"tokens": 4000, "seconds": 3.0, "kl_before": 0.2, "kl_after": 0.1},
        ),
        dict(
            _run(1.0, "1111", 100.0),
            recovery={"tokens": 6000, "seconds": 5.0, "kl_before": 0.4, "kl_after": 0.1},
        ),
    ]
    data["recovery"] = [
        dict(setting("resp", [_run(0.5, "1100", 100.0)] * 2), recovery="lora", tokens=0),
        dict(setting("resp", distilled), recovery="distill", tokens=5000),
    ]
    text = rendering.render(args, data, "--quick")
    recovery = text[text.index("### Recovery after RESP") :]
    assert "| 30% | RESP | - | 0.625 ± 0.177 [" in recovery
    assert "| 30% | RESP + lora | dense traces | 0.500 ± 0.000 [" in recovery  # records without its figures
    assert "| 30% | RESP + distill | 5,000 (5k) | 0.875 ± 0.177 [" in recovery
    assert "| 0.3000 -> 0.1000 | 4 | 2 |" in recovery
    assert "| resp | 2 | 0.625 ± 0.177 [" in text and "| magnitude | 1 | 0.250 [" in text
    assert "| magnitude | per_layer | 30% | 3.00x | 1.40x | 0.47x |" in text  # 3x the tokens: slower overall
    assert (
        "Best mean on `test`: 2 stages; the fewest stages whose pooled 95% interval overlaps the best's: 2"
        in text
    )
    rendering.plot(args, data, tmp_path / "q.png")
    assert (tmp_path / "q.png").stat().st_size > 1000
    assert "| resp | 0.625 ± 0.177 |" in rendering.readme_summary(args, data, "--quick")


def test_stage_default_is_the_fewest_stages_the_seeds_cannot_tell_from_the_best(stats):
    def sweep_point(stages: int, correct: list[str]) -> dict:
        return dict(num_stages=stages, runs=[_run(c.count("1") / len(c), c, 100.0) for c in correct])

    few = sweep_point(2, ["1" * 50 + "0" * 50] * 3)  # 0.50
    some = sweep_point(4, ["1" * 75 + "0" * 25] * 3)  # 0.75 [0.70, 0.79] over 300 problems
    many = sweep_point(8, ["1" * 80 + "0" * 20] * 3)  # 0.80 [0.75, 0.84], the best
    best, enough = stats.stage_choice([few, some, many], "test")
    assert best is many and enough is some
    sure = sweep_point(8, ["1" * 90 + "0" * 10] * 3)  # 0.90 [0.86, 0.93]: no cheaper interval comes near it
    assert stats.stage_choice([few, some, sure], "test") == (sure, sure)


def test_testbed_benchmark_lists_every_split_a_training_run_checked(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_testbed", REPO / "benchmarks" / "bench_testbed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    v1_run = {"heldout_greedy_eval": {"n": 500, "accuracy": 1.0}}
    assert module.after(v1_run) == "test 100.0% (n=500)"
    v2_run = {
        "heldout_greedy_eval": {"n": 200, "accuracy": 0.94},
        "greedy_eval": {
            "test": {"n": 200, "accuracy": 0.94},
            "held_out_frames": {"n": 200, "accuracy": 0.015},
        },
    }
    assert module.after(v2_run) == "test 94.0% (n=200), held_out_frames 1.5% (n=200)"


@pytest.fixture
def bench_real(monkeypatch, tmp_path):
    monkeypatch.setenv("RESP_BENCH_REAL_CACHE", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("bench_real", REPO / "benchmarks" / "bench_real.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_real", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_real_model_benchmark_runs_every_phase_resumes_and_measures_fidelity(bench_real, tmp_path, capsys):
    """The whole pipeline of bench_real.py on the testbed reasoner (`--quick`): each phase in its own process,
    a record per row, nothing left to do after, and a deleted phase is the only one planned again."""
    records = tmp_path / "records"
    assert bench_real.main(["--quick", "--records", str(records)]) == 0
    out = capsys.readouterr().out
    data = {p.name: json.loads(p.read_text()) for p in records.glob("*.json")}
    assert len(data) == 3  # dense, resp, wanda-sp
    by_method = {d["row"]["method"]: d for d in data.values()}
    dense = by_method["dense"]
    # The dense model scores its own greedy answers: every token is its top-1 choice (fp32, same padding), so the
    # reference answers and the scored positions line up.
    assert dense["fidelity"]["top1_agreement"] > 0.99
    for name in ("resp", "wanda-sp"):
        record = by_method[name]
        assert 0.15 < record["prune"]["sparsity"] < 0.25
        assert record["fidelity"]["tokens"] == dense["fidelity"]["tokens"]  # the same reference answers
        assert record["fidelity"]["nll_per_token"] != dense["fidelity"]["nll_per_token"]  # the pruned model's
        assert record["prune"]["cpu_seconds"] > 0
        assert sum(c["n"] for c in record["chunks"].values()) == 4
    assert "| resp | 0." in out and "| dense | 0 |" in out

    assert bench_real.main(["--quick", "--records", str(records), "--plan"]) == 0
    assert "0 phases left" in capsys.readouterr().out
    path = next(p for p in records.glob("*.json") if json.loads(p.read_text())["row"]["method"] == "wanda-sp")
    record = json.loads(path.read_text())
    del record["chunks"]["0"]
    path.write_text(json.dumps(record))
    assert bench_real.main(["--quick", "--records", str(records), "--plan"]) == 0
    plan = capsys.readouterr().out.splitlines()
    assert plan[0].split() == ["wanda-sp-0.20-s0", "0"] and plan[-1].startswith("1 phases left")


def test_real_model_records_are_keyed_by_what_decides_the_result(bench_real):
    """Label, group and problem count do not re-key a record (more problems extend it); recipe and settings do."""
    row = bench_real._row("resp", 0.2)
    key = bench_real.row_key(row, "sha", {"train": "a", "test": "b"})
    same = bench_real._row("resp", 0.2, label="other", problems=100, group="extra")
    assert (
        bench_real.record_path(same, bench_real.row_key(same, "sha", {"train": "a", "test": "b"})).name.split(
            "-"
        )[-1]
        == bench_real.record_path(row, key).name.split("-")[-1]
    )
    for other in (
        bench_real._row("resp", 0.3),
        bench_real._row("resp", 0.2, seed=1),
        bench_real._row("resp", 0.2, num_stages=4),
    ):
        assert bench_real.row_key(other, "sha", {"train": "a", "test": "b"}) != key
    assert bench_real.row_key(row, "sha2", {"train": "a", "test": "b"}) != key
    assert bench_real.row_key(row, "sha", {"train": "a", "test": "c"}) != key


def test_real_model_plan_completes_each_comparison_before_widening_it(bench_real, tmp_path_factory):
    """Dense references first, then each row's prune, fidelity and first accuracy chunk together, then the other
    chunks across rows: an interrupted run leaves whole comparisons on the same problems, not prunes alone."""
    chunk = bench_real.SETTINGS["chunk"]
    bench_real.SETTINGS["fidelity_problems"] = 2 * chunk  # the dense references span two chunks
    path = tmp_path_factory.mktemp("refs") / "references.jsonl"  # none written yet
    bench_real.references_file = lambda: path
    rows = [
        bench_real.Row("dense", problems=2 * chunk),
        bench_real._row("resp", 0.2, problems=2 * chunk),
        bench_real._row("wanda-sp", 0.2, problems=chunk),
    ]
    records = {row: bench_real.Record(bench_real.asdict(row), {}) for row in rows}
    plan = [(row.method, phase) for row, phase in bench_real.pending(records)]
    assert plan == [
        ("dense", "0"),
        ("dense", "1"),
        ("dense", "fidelity"),
        ("resp", "prune"),
        ("resp", "fidelity"),
        ("resp", "0"),
        ("wanda-sp", "prune"),
        ("wanda-sp", "fidelity"),
        ("wanda-sp", "0"),
        ("resp", "1"),
    ]
    records[rows[1]].chunks["0"] = {"n": chunk}
    records[rows[1]].prune = {"seconds": 1.0}
    assert ("resp", "0") not in [(r.method, p) for r, p in bench_real.pending(records)]
    # The dense chunks' accuracy is recorded but the references file (what fidelity reads) lacks the second
    # chunk's answers: that chunk runs again, the first does not.
    dense = records[rows[0]]
    dense.chunks.update({"0": {"n": chunk}, "1": {"n": chunk}})
    path.write_text("".join(json.dumps({"problem": i}) + "\n" for i in range(chunk)))
    phases = [(r.method, p) for r, p in bench_real.pending(records)]
    assert ("dense", "1") in phases and ("dense", "0") not in phases
