"""The run folder (resume, fingerprint, leftovers, permissions), the typed report and atomic writes."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from helpers_tokenizer import build_tiny_model, build_tiny_tokenizer
from test_pruner import PROMPTS, small_config

from optimum_resp.accounting import SizeReport
from optimum_resp.calibration import HFGenerator, Trace, as_prompts, load_traces, save_traces
from optimum_resp.files import atomic_write, write_json
from optimum_resp.importance import TaylorScorer
from optimum_resp.pruner import RESPPruner
from optimum_resp.report import PruneReport
from optimum_resp.run_folder import RunFolder, fingerprint


class CountingGenerator(HFGenerator):
    """transformers generation that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, *args, **kwargs):
        self.calls += 1
        return super().generate(*args, **kwargs)


class Interrupted(Exception):
    pass


class DiesWhenScoring(TaylorScorer):
    """Stands for a prune killed after its dense traces were saved, before stage 1 finished."""

    def score(self, model, examples=None):
        raise Interrupted


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_run_killed_before_stage_1_reuses_its_dense_traces(tmp_path):
    tokenizer = build_tiny_tokenizer()
    run = tmp_path / "run"
    config = small_config()
    with pytest.raises(Interrupted):
        RESPPruner(
            build_tiny_model(tokenizer), tokenizer, config, generator="hf", scorer=DiesWhenScoring()
        ).prune(PROMPTS, run)
    assert (run / RunFolder.DENSE_TRACES).is_file() and not RunFolder(run).stage_dirs()
    saved = load_traces(run / RunFolder.DENSE_TRACES)

    generator = CountingGenerator()
    resumed = RESPPruner(build_tiny_model(tokenizer), tokenizer, config, generator=generator).prune(
        PROMPTS, run
    )
    fresh = RESPPruner(build_tiny_model(tokenizer), tokenizer, config, generator="hf").prune(PROMPTS)
    # One generation (the regeneration at milestone 0.1), not two: the dense traces came from the folder.
    assert generator.calls == 1
    assert load_traces(run / RunFolder.DENSE_TRACES) == saved
    assert resumed.plan == fresh.plan


def test_a_run_of_another_model_or_other_prompts_is_not_resumed(tmp_path):
    tokenizer = build_tiny_tokenizer()
    run = tmp_path / "run"
    config = small_config(num_stages=1, regeneration_milestones=[])
    RESPPruner(build_tiny_model(tokenizer, seed=0), tokenizer, config, generator="hf").prune(PROMPTS, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    other = RESPPruner(build_tiny_model(tokenizer, seed=1), tokenizer, config, generator="hf")
    with pytest.raises(ValueError, match="another model or calibration set: the model's config or weights"):
        other.prune(PROMPTS, run)
    same_model = RESPPruner(build_tiny_model(tokenizer, seed=0), tokenizer, config, generator="hf")
    with pytest.raises(ValueError, match="the calibration prompts differ"):
        same_model.prune(list(reversed(PROMPTS)), run)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing overwritten

    # The same model loaded from elsewhere (another source path) is the same run: it resumes.
    moved = RESPPruner(
        build_tiny_model(tokenizer, seed=0), tokenizer, config, generator="hf", source="/moved"
    )
    assert moved.prune(PROMPTS, run).plan.to_dict() == json.loads(
        (run / "stages/stage_001/plan.json").read_text()
    )


def test_fingerprint_sees_one_changed_weight_and_ignores_use_cache():
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
    prompts = as_prompts(PROMPTS)
    first = fingerprint(model, prompts, "a")
    model.config.use_cache = not model.config.use_cache
    assert fingerprint(model, prompts, "b").model == first.model
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 5] += 1.0
    assert fingerprint(model, prompts, "a").model != first.model
    assert fingerprint(model, prompts[:-1], "a").prompts != first.prompts


def test_leftovers_of_interrupted_writes_are_removed_on_resume(tmp_path):
    tokenizer = build_tiny_tokenizer()
    run = tmp_path / "run"
    config = small_config(num_stages=2, regeneration_milestones=[])
    RESPPruner(build_tiny_model(tokenizer), tokenizer, config, generator="hf").prune(PROMPTS, run)
    stray_file = run / ".dense_traces.jsonl.abc123.tmp"
    stray_file.write_text("half a file")
    stray_stage = run / "stages" / ".stage_003.xyz"
    stray_stage.mkdir()
    (stray_stage / "plan.json").write_text("{")
    RESPPruner(build_tiny_model(tokenizer), tokenizer, config, generator="hf").prune(PROMPTS, run)
    assert not stray_file.exists() and not stray_stage.exists()
    assert [p.name for p in RunFolder(run).stage_dirs()] == ["stage_001", "stage_002"]


def test_files_get_the_users_umask_not_0600(tmp_path):
    tokenizer = build_tiny_tokenizer()
    previous = os.umask(0o022)
    try:
        run = tmp_path / "run"
        pruner = RESPPruner(
            build_tiny_model(tokenizer),
            tokenizer,
            small_config(num_stages=1, regeneration_milestones=[]),
            generator="hf",
        )
        pruner.prune(PROMPTS, run)
        pruner.save_pretrained(run)
        files = [p for p in run.rglob("*") if p.is_file() and p.name != RunFolder.LOCK]
        assert {"model.safetensors", "resp_report.json", "README.md", "resp_run.json", "rng.pt"} <= {
            p.name for p in files
        }
        assert {p.relative_to(run).as_posix(): oct(_mode(p)) for p in files} == {
            p.relative_to(run).as_posix(): oct(0o644) for p in files
        }
        assert {oct(_mode(d)) for d in run.rglob("*") if d.is_dir()} == {oct(0o755)}
    finally:
        os.umask(previous)


def test_run_folder_status_and_history_mirror_what_the_pruner_wrote(tmp_path):
    tokenizer = build_tiny_tokenizer()
    run = RunFolder(tmp_path / "run")
    pruner = RESPPruner(build_tiny_model(tokenizer), tokenizer, small_config(), generator="hf")
    result = pruner.prune(PROMPTS, run.path)
    assert run.status == "running" and run.load_report() is None
    assert run.load_history() == result.stages
    checkpoint = run.last_stage()
    assert checkpoint.plan == result.plan and checkpoint.stage == 3 and checkpoint.regenerated == [0.1]
    pruner.save_pretrained(run.path)
    assert run.status == "finished"
    assert run.load_report() == result.report


def test_prune_report_round_trips_through_its_json_form():
    tokenizer = build_tiny_tokenizer()
    result = RESPPruner(
        build_tiny_model(tokenizer), tokenizer, small_config(recovery="lora"), generator="hf"
    ).prune(PROMPTS)
    report = result.report
    data = json.loads(json.dumps(report.to_dict()))
    assert PruneReport.from_dict(data) == report
    assert SizeReport.from_dict(data) == report.size
    assert report.recovery.method == "lora" and report.export == "per_layer"
    # The file's keys, flat: what resp_report.json has always held.
    assert {"model_type", "sparsity", "layers", "stages", "source", "resp_config", "recovery"} <= set(data)
    minimal = {k: v for k, v in data.items() if k not in ("stages", "source", "resp_config", "recovery")}
    bare = PruneReport.from_dict(minimal)
    assert bare.stages == [] and bare.resp_config is None and bare.export == "per_layer"


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})

    def fails(path):
        path.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fails)
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temp file left behind


def test_a_damaged_trace_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "traces.jsonl"
    save_traces([Trace("q", "p", "c", 3, False)], path)
    with open(path, "a") as f:
        f.write('{"question": "cut off in the mi\n')
    with pytest.raises(ValueError, match=r"traces.jsonl, line 2: not a saved trace"):
        load_traces(path)
