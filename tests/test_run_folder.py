"""The run folder (resume, fingerprint, leftovers, permissions), the typed report and atomic writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer
from test_pruner import PROMPTS, small_config

from optimum_resp.accounting import SizeReport
from optimum_resp.calibration import HFGenerator, Trace, as_prompts, load_traces, save_traces
from optimum_resp.configuration_resp import RESPConfig
from optimum_resp.files import atomic_write, write_json
from optimum_resp.importance import TaylorScorer
from optimum_resp.pruner import RESPPruner
from optimum_resp.report import PruneReport
from optimum_resp.run_folder import RunFolder, fingerprint

FLAT_CONFIG = Path(__file__).parent / "fixtures" / "resp_config_flat.json"


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
    tokenizer = tiny_tokenizer()
    run = tmp_path / "run"
    config = small_config()
    with pytest.raises(Interrupted):
        RESPPruner(
            tiny_model(tokenizer=tokenizer), tokenizer, config, generator="hf", scorer=DiesWhenScoring()
        ).prune(PROMPTS, run)
    assert (run / RunFolder.DENSE_TRACES).is_file() and not RunFolder(run).stage_dirs()
    saved = load_traces(run / RunFolder.DENSE_TRACES)

    generator = CountingGenerator()
    resumed = RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, config, generator=generator).prune(
        PROMPTS, run
    )
    fresh = RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, config, generator="hf").prune(PROMPTS)
    # One generation (the regeneration at milestone 0.1), not two: the dense traces came from the folder.
    assert generator.calls == 1
    assert load_traces(run / RunFolder.DENSE_TRACES) == saved
    assert resumed.plan == fresh.plan


def test_a_run_of_another_model_or_other_prompts_is_not_resumed(tmp_path):
    tokenizer = tiny_tokenizer()
    run = tmp_path / "run"
    config = small_config(num_stages=1, regeneration_milestones=[])
    RESPPruner(tiny_model(tokenizer=tokenizer, seed=0), tokenizer, config, generator="hf").prune(PROMPTS, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    other = RESPPruner(tiny_model(tokenizer=tokenizer, seed=1), tokenizer, config, generator="hf")
    with pytest.raises(ValueError, match="another model or calibration set: the model's config or weights"):
        other.prune(PROMPTS, run)
    same_model = RESPPruner(tiny_model(tokenizer=tokenizer, seed=0), tokenizer, config, generator="hf")
    with pytest.raises(ValueError, match="the calibration prompts differ"):
        same_model.prune(list(reversed(PROMPTS)), run)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing overwritten

    # The same model loaded from elsewhere (another source path) is the same run: it resumes.
    moved = RESPPruner(
        tiny_model(tokenizer=tokenizer, seed=0), tokenizer, config, generator="hf", source="/moved"
    )
    assert moved.prune(PROMPTS, run).plan.to_dict() == json.loads(
        (run / "stages/stage_001/plan.json").read_text()
    )


def test_fingerprint_sees_one_changed_weight_and_ignores_use_cache():
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    prompts = as_prompts(PROMPTS)
    first = fingerprint(model, prompts, "a")
    model.config.use_cache = not model.config.use_cache
    assert fingerprint(model, prompts, "b").model == first.model
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 5] += 1.0
    assert fingerprint(model, prompts, "a").model != first.model
    assert fingerprint(model, prompts[:-1], "a").prompts != first.prompts


def test_leftovers_of_interrupted_writes_are_removed_on_resume(tmp_path):
    tokenizer = tiny_tokenizer()
    run = tmp_path / "run"
    config = small_config(num_stages=2, regeneration_milestones=[])
    RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, config, generator="hf").prune(PROMPTS, run)
    stray_file = run / ".dense_traces.jsonl.abc123.tmp"
    stray_file.write_text("half a file")
    stray_stage = run / "stages" / ".stage_003.xyz"
    stray_stage.mkdir()
    (stray_stage / "plan.json").write_text("{")
    RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, config, generator="hf").prune(PROMPTS, run)
    assert not stray_file.exists() and not stray_stage.exists()
    assert [p.name for p in RunFolder(run).stage_dirs()] == ["stage_002"]  # only the last stage is kept


def test_files_get_the_users_umask_not_0600(tmp_path):
    tokenizer = tiny_tokenizer()
    previous = os.umask(0o022)
    try:
        run = tmp_path / "run"
        pruner = RESPPruner(
            tiny_model(tokenizer=tokenizer),
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
    tokenizer = tiny_tokenizer()
    run = RunFolder(tmp_path / "run")
    pruner = RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, small_config(), generator="hf")
    result = pruner.prune(PROMPTS, run.path)
    assert run.status == "running" and run.load_report() is None
    assert run.load_history() == result.stages
    checkpoint = run.last_stage()
    assert checkpoint.plan == result.plan and checkpoint.stage == 3 and checkpoint.regenerated == [0.1]
    pruner.save_pretrained(run.path)
    assert run.status == "finished"
    assert run.load_report() == result.report


def test_prune_report_round_trips_through_its_json_form():
    tokenizer = tiny_tokenizer()
    result = RESPPruner(
        tiny_model(tokenizer=tokenizer), tokenizer, small_config(recovery="lora"), generator="hf"
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


# ------------------------------------------------------------------------------------------------
# Never destroy a folder; a stopped run leaves a folder its corrected re-run takes up again.
# ------------------------------------------------------------------------------------------------


def _one_stage(tokenizer, generator="hf", **overrides):
    config = small_config(**{"num_stages": 1, "regeneration_milestones": [], **overrides})
    return RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, config, generator=generator)


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_save_pretrained_never_writes_over_the_source_folder_or_another_run(tmp_path):
    tokenizer = tiny_tokenizer()
    source = tmp_path / "dense"
    tiny_model(tokenizer=tokenizer).save_pretrained(source)
    tokenizer.save_pretrained(source)
    dense = _files(source)
    pruner = RESPPruner.from_pretrained(
        source, config=small_config(num_stages=1, regeneration_milestones=[]), generator="hf"
    )
    pruner.prune(PROMPTS)
    for overwrite in (False, True):  # the dense weights are never replaced, whatever the caller says
        with pytest.raises(ValueError, match=rf"{source} is the folder the model is loaded from"):
            pruner.save_pretrained(source, overwrite=overwrite)
    assert _files(source) == dense

    # Another run's folder, and a folder holding another model: refused unless overwrite=True.
    other = tmp_path / "other-run"
    _one_stage(tokenizer, target_sparsity=0.2).prune(PROMPTS, other)
    before = _files(other)
    with pytest.raises(ValueError, match=rf"{other} already holds another RESP run .*overwrite=True"):
        pruner.save_pretrained(other)
    assert _files(other) == before
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"already holds a model \(config.json\)"):
        pruner.save_pretrained(tmp_path / "model")
    # Overwritten, the other run's records go with its model: nothing there passes for that run any more.
    pruner.save_pretrained(other, overwrite=True)
    assert not RunFolder(other).is_run and not (other / RunFolder.STAGES).exists()
    assert RESPConfig.from_pretrained(other) == pruner.config
    assert json.loads((other / "resp_report.json").read_text())["sparsity"] == pruner.result.report.sparsity
    # Its own saves and its own run folder stay writable (the normal flow).
    pruner.save_pretrained(tmp_path / "saved")
    pruner.save_pretrained(tmp_path / "saved")


def test_the_lock_file_stays_so_a_late_opener_locks_the_same_file(tmp_path):
    """Removing the lock file on release let a process that had opened it lock the removed file while a third
    locked a new one: both would prune into the folder. The file stays; every locker meets the same file."""
    import fcntl

    run = RunFolder(tmp_path / "run")
    with run.lock():
        late = open(run.path / RunFolder.LOCK)  # another process opened the file while the lock was held
        with run.lock():  # re-entrant on the same RunFolder (the CLI holds it across prune and save)
            pass
        with pytest.raises(ValueError, match="in use by another prune"):
            with RunFolder(run.path).lock():
                pass
    with late:
        fcntl.flock(late, fcntl.LOCK_EX | fcntl.LOCK_NB)  # it gets the lock once released...
        with pytest.raises(ValueError, match="in use by another prune"):  # ...and then nobody else does
            with RunFolder(run.path).lock():
                pass


class _Unfinished:
    """The dense model never ends its answers (a tokenizer or chat template that does not fit it)."""

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, model, tokenizer, prompts, settings, seed=0):
        from optimum_resp.generation import Completion

        self.calls += 1
        ids = tokenizer("<think>\nstill thinking", add_special_tokens=False)["input_ids"]
        return [Completion(p, "<think>\nstill thinking", ids, len(ids), True) for p in prompts]


def test_a_run_refused_for_unfinished_traces_keeps_them_and_resumes_once_allowed(tmp_path):
    tokenizer = tiny_tokenizer()
    run = RunFolder(tmp_path / "run")
    generator = _Unfinished()
    refused = RESPPruner(
        tiny_model(tokenizer=tokenizer),
        tokenizer,
        small_config(num_stages=1, regeneration_milestones=[], allow_unfinished_traces=False),
        generator=generator,
    )
    with pytest.raises(ValueError, match="None of the dense model's 6 calibration traces finished"):
        refused.prune(PROMPTS, run.path)
    assert generator.calls == 1 and len(run.load_dense_traces()) == 6  # kept: hours on a real model
    assert run.status == "stopped" and "allow_unfinished_traces" in run.reason  # not "running" forever
    # The same command again is refused again, from the saved traces, without generating them again.
    with pytest.raises(ValueError, match="None of the dense model's 6 calibration traces finished"):
        refused.prune(PROMPTS, run.path)
    assert generator.calls == 1
    # Corrected (the flag changes whether a prune goes on, not what it computes): the run resumes on them.
    allowed = _one_stage(tokenizer, generator=generator, allow_unfinished_traces=True)
    allowed.prune(PROMPTS, run.path)
    assert generator.calls == 1 and run.status == "running" and run.reason is None
    assert RESPConfig.from_pretrained(
        run.path
    ).calibration.allow_unfinished_traces  # the folder records what ran
    allowed.save_pretrained(run.path)
    assert run.status == "finished"


class DiesInStage2(TaylorScorer):
    """Stands for a prune killed in its second stage, after the first one's checkpoint landed."""

    calls = 0

    def score(self, model, examples=None):
        DiesInStage2.calls += 1
        if DiesInStage2.calls == 2:
            raise Interrupted
        return super().score(model, examples)


def test_a_run_folder_of_the_flat_config_resumes(tmp_path):
    """A run folder written before the config had sections holds a flat resp_config.json: the same recipe resumes
    it after its last stage, and reaches the keep-sets a fresh prune of that recipe reaches."""
    flat = FLAT_CONFIG.read_text()
    config = RESPConfig.from_dict(json.loads(flat))
    assert config.recovery is not None and config.export.runtimes == ["vllm"]  # every section has a setting
    tokenizer = tiny_tokenizer()
    run = tmp_path / "run"
    DiesInStage2.calls = 0
    scorer = DiesInStage2.from_config(config.scoring, seed=config.seed)
    with pytest.raises(Interrupted):
        RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, config, generator="hf", scorer=scorer).prune(
            PROMPTS, run
        )
    assert [p.name for p in RunFolder(run).stage_dirs()] == ["stage_001"]
    (run / RunFolder.CONFIG).write_text(flat)  # as the flat version wrote it

    generator = CountingGenerator()
    resumed = RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, config, generator=generator)
    result = resumed.prune(PROMPTS, run)
    fresh = RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, config, generator="hf").prune(PROMPTS)
    assert generator.calls == 1  # stage 2's regeneration: the dense traces and stage 1 came from the folder
    assert [s.stage for s in result.stages] == [1, 2] and result.plan == fresh.plan
    assert result.report.recovery.method == "lora"
    # A different recipe is still refused against the flat file, naming the setting by its section.
    (run / RunFolder.CONFIG).write_text(flat)
    with pytest.raises(ValueError, match=r"different config .*'scoring.abs_after': \('all', 'batch'\)"):
        RESPPruner(
            tiny_model(tokenizer=tokenizer),
            tokenizer,
            config.override(taylor_abs_after="batch"),
            generator="hf",
        ).prune(PROMPTS, run)


def test_a_damaged_run_record_names_a_fix_that_works(tmp_path, caplog):
    tokenizer = tiny_tokenizer()
    run = tmp_path / "run"
    config = small_config(num_stages=2, regeneration_milestones=[])
    with pytest.raises(Interrupted):
        RESPPruner(
            tiny_model(tokenizer=tokenizer), tokenizer, config, generator="hf", scorer=_DiesAtStage(2)
        ).prune(PROMPTS, run)
    (run / RunFolder.RUN).write_text('{"status": "runn')  # a damaged record
    pruner = RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, config, generator="hf")
    with pytest.raises(
        ValueError, match=r'resp_run.json is damaged.*replace the file with \{"status": "running"\}'
    ):
        pruner.prune(PROMPTS, run)
    (run / RunFolder.RUN).write_text('{"status": "running"}')  # the fix, as the message words it
    result = pruner.prune(PROMPTS, run)
    assert "records no fingerprint" in caplog.text and [s.stage for s in result.stages] == [1, 2]
    assert "model" in json.loads((run / RunFolder.RUN).read_text())  # fingerprinted again


class _DiesAtStage(TaylorScorer):
    """Stands for a prune killed while scoring stage `stage`, after the stages before it were saved."""

    def __init__(self, stage: int) -> None:
        super().__init__()
        self.stage, self.calls = stage, 0

    def score(self, model, examples=None):
        self.calls += 1
        if self.calls == self.stage:
            raise Interrupted
        return super().score(model, examples)


def test_a_stage_checkpoint_missing_a_file_names_it_and_the_fix(tmp_path):
    import shutil

    tokenizer = tiny_tokenizer()
    run = tmp_path / "run"
    config = small_config(num_stages=2, regeneration_milestones=[])
    with pytest.raises(Interrupted):
        RESPPruner(
            tiny_model(tokenizer=tokenizer), tokenizer, config, generator="hf", scorer=_DiesAtStage(2)
        ).prune(PROMPTS, run)
    stage = run / RunFolder.STAGES / "stage_001"
    (stage / "rng.pt").unlink()
    pruner = RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, config, generator="hf")
    with pytest.raises(
        ValueError, match=rf"{stage} is incomplete or damaged \(it has no rng.pt\)\. Delete that"
    ):
        pruner.prune(PROMPTS, run)
    shutil.rmtree(stage)  # the fix it names: the run resumes from its dense traces
    assert [s.stage for s in pruner.prune(PROMPTS, run).stages] == [1, 2]


def test_many_stages_are_warned_about_and_keep_one_checkpoint(tmp_path, caplog):
    from optimum_resp.pruner import MANY_STAGES

    tokenizer = tiny_tokenizer()
    caplog.set_level("WARNING", logger="optimum_resp")
    many = RESPPruner(
        tiny_model(tokenizer=tokenizer),
        tokenizer,
        small_config(num_stages=MANY_STAGES + 1),
        scorer=DiesWhenScoring(),
    )
    assert "every stage" not in caplog.text  # said by the prune, once, not by every check of the recipe
    with pytest.raises(Interrupted):
        many.prune(PROMPTS)
    assert caplog.text.count(f"num_stages={MANY_STAGES + 1}: every stage is one scoring pass") == 1
    caplog.clear()
    run = RunFolder(tmp_path / "run")
    pruner = _one_stage(tokenizer, num_stages=4)
    pruner.prune(PROMPTS, run.path)
    assert "every stage" not in caplog.text
    # Only the last stage is on disk, its record holding each stage's once: growth is linear, not quadratic.
    assert [p.name for p in run.stage_dirs()] == ["stage_004"]
    assert len(json.loads((run.stage_dirs()[0] / "record.json").read_text())["history"]) == 4
