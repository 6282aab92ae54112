"""The folder a prune writes as it goes, so that a killed run resumes and a finished one explains itself.

    resp_config.json       the recipe (RESPConfig)
    resp_run.json          status (running, stopped with its reason, finished), source, and the fingerprint
                           of the model and calibration prompts
    selected_prompts.json  the prompts SSGR's difficulty selection kept (only when it is on)
    dense_traces.jsonl     the dense model's traces (LoRA recovery distils them; a resume before stage 1
                           reuses them instead of generating again)
    stages/stage_NNN/      the last finished stage: plan.json (keep-sets against the dense model),
                           traces.jsonl, record.json (history, milestones crossed), rng.pt, and
                           added_biases.safetensors when bias compensation added biases. Earlier stages are
                           removed once it lands: a resume needs only the last, so 1000 stages take the
                           room of one (the history in record.json grows by one line per stage)
    resp_report.json       the finished prune's report, beside the exported model
    .resp.lock             held while a prune (or its save) runs; never removed (see `RunFolder.lock`)

`RunFolder` owns this layout: its save and load methods mirror each other, every file is written
atomically (`files.atomic_write`) and every stage folder is renamed into place whole. It also owns the
checks of an output folder made before any work (`check_output`, `check_can_start`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .calibration import CalibrationPrompt, Trace, load_traces, save_traces
from .configuration_resp import CONFIG_NAME, RESPConfig
from .files import TMP_SUFFIX, atomic_write, check_writable, default_mode, read_json, write_json
from .profiling import PhaseClock
from .report import PruneReport, StageRecord
from .surgery import PruningPlan

logger = logging.getLogger(__name__)

__all__ = ["RESUME_NEUTRAL", "Fingerprint", "RunFolder", "StageCheckpoint", "fingerprint"]

RESUME_NEUTRAL = ("calibration.allow_unfinished_traces",)
"""RESPConfig settings (dotted paths) a resume may change: they decide whether a prune goes on, not what it computes
(a run refused for unfinished traces resumes with the flag set, reusing the traces it saved)."""


def _dotted(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {dotted path: leaf value} (a section that is None is one leaf)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    return {
        k: v
        for key, value in tree.items()
        for k, v in _dotted(value, f"{prefix}.{key}" if prefix else key).items()
    }


@dataclass(frozen=True)
class Fingerprint:
    """What a run was started from: the model (id or path, and a hash of its config and weights) and the
    calibration prompts. A resume with a different model or different prompts is refused."""

    source: str
    model: str
    prompts: str

    def differences(self, other: Fingerprint) -> list[str]:
        """What differs from `other`, in words."""
        out = []
        if self.model != other.model:
            out.append(f"the model's config or weights (source {self.source!r} vs {other.source!r})")
        if self.prompts != other.prompts:
            out.append("the calibration prompts")
        return out


def _tensor_digest(h: Any, tensor: torch.Tensor, sample: int = 4096) -> None:
    """Feed the shape, dtype and a strided sample of a tensor's bytes (all of it when small) to `h`."""
    h.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
    flat = tensor.detach().reshape(-1)
    if flat.numel() > sample:
        flat = flat[:: flat.numel() // sample][:sample]
    h.update(flat.contiguous().cpu().view(torch.uint8).numpy().tobytes())


def fingerprint(model: Any, prompts: Sequence[CalibrationPrompt], source: str) -> Fingerprint:
    """The fingerprint of a model and its calibration prompts (a sample of every weight: seconds on 8B)."""
    h = hashlib.blake2b(digest_size=16)
    # The architecture, not where it was loaded from or how the last pass set use_cache.
    config = {
        k: v
        for k, v in model.config.to_dict().items()
        if not k.startswith("_") and k not in ("transformers_version", "use_cache")
    }
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        _tensor_digest(h, tensor)
    p = hashlib.blake2b(digest_size=16)
    for prompt in prompts:
        p.update(json.dumps([prompt.question, prompt.gold, prompt.solution], sort_keys=True).encode())
    return Fingerprint(source=source, model=h.hexdigest(), prompts=p.hexdigest())


@dataclass
class StageCheckpoint:
    """The state after a finished stage: enough to rebuild the model from the dense one and go on."""

    plan: PruningPlan  # keep-sets against the dense model
    history: list[StageRecord]
    regenerated: list[float]  # regeneration milestones already crossed
    traces: list[Trace]
    rng_state: torch.Tensor
    added_biases: dict[str, torch.Tensor]  # biases the plan alone cannot rebuild (bias compensation)

    @property
    def stage(self) -> int:
        return len(self.history)


class RunFolder:
    """A RESP run's output folder (see the module docstring for its layout)."""

    CONFIG = CONFIG_NAME
    RUN = "resp_run.json"
    SELECTED = "selected_prompts.json"
    DENSE_TRACES = "dense_traces.jsonl"
    STAGES = "stages"
    REPORT = "resp_report.json"
    LOCK = ".resp.lock"
    BIASES = "added_biases.safetensors"
    RECOVERY = "recovery"  # what recovery keeps to resume: teacher targets, Trainer checkpoints
    # Resume-only files and interrupted writes: never part of the published model.
    WORK_FILES = (f"{STAGES}/*", f"{RECOVERY}/*", f".*{TMP_SUFFIX}", RUN, LOCK)

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock_depth = 0  # lock() is re-entrant on one RunFolder: the CLI holds it across prune and save

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------------ checks before any work

    @property
    def is_empty(self) -> bool:
        """Whether the folder does not exist yet or holds nothing but a lock file."""
        return not self.path.exists() or (
            self.path.is_dir() and all(p.name == self.LOCK for p in self.path.iterdir())
        )

    def contents(self) -> str:
        """What the folder holds, in words (for refusals to write over it)."""
        if self.is_run:
            return f"another RESP run ({self.RUN})"
        if (self.path / "config.json").is_file():
            return "a model (config.json)"
        return "files"

    def check_output(self, source: str | os.PathLike | None = None) -> None:
        """Refuse, before any work and without writing anything, the folder the model was loaded from (never
        written to, whatever else is allowed), a file, or a folder that cannot be written."""
        if source is not None and _same_folder(self.path, source):
            raise ValueError(
                f"{self.path} is the folder the model is loaded from: writing the pruned model there would replace "
                "the model it is pruned from. Choose another output folder."
            )
        check_writable(self.path)

    def check_can_save(self, source: str | os.PathLike | None = None, overwrite: bool = False) -> None:
        """What saving a model here checks first: `check_output`, then the folder is empty (or `overwrite`)."""
        self.check_output(source)
        if not overwrite and not self.is_empty:
            raise ValueError(
                f"{self.path} already holds {self.contents()}, which saving would replace. Choose an empty or new "
                "folder, or pass overwrite=True to replace it."
            )

    def check_can_start(self, config: RESPConfig | None, source: str | os.PathLike | None = None) -> None:
        """What a prune into this folder checks before any work: `check_output`, then the folder is empty, or
        holds a run of `config` (which it resumes; None: any run, its recipe compared later; the model and
        prompts are compared once loaded)."""
        self.check_output(source)
        if self.is_run:
            if config is not None:
                self.check_config(config)
        elif not self.is_empty:
            raise ValueError(
                f"{self.path} is not empty and holds no RESP run; choose an empty or new folder."
            )

    # ------------------------------------------------------------------ the run record

    @property
    def is_run(self) -> bool:
        """Whether a RESP run was started here (finished or not)."""
        return (self.path / self.RUN).is_file()

    def _record(self) -> dict[str, Any]:
        """resp_run.json; a damaged one is refused with the fix that works (not "remove it": without it the
        folder is no run at all, and a non-empty folder that is no run is refused)."""
        path = self.path / self.RUN
        try:
            record = read_json(path)
        except ValueError as err:
            record = err
        if not isinstance(record, dict):
            raise ValueError(
                f"{path} is damaged (not a JSON object of the run's status and fingerprint). To resume the run "
                'anyway, replace the file with {"status": "running"} (the model and calibration prompts then go '
                "unchecked against the run's); to start over, choose another output folder."
            )
        return record

    def start(self, config: RESPConfig, print_: Fingerprint) -> None:
        """Begin a run in a new or empty folder: the recipe and the fingerprint of what it prunes."""
        if not self.is_empty:
            raise ValueError(
                f"{self.path} is not empty and holds no RESP run; choose an empty or new folder."
            )
        self.path.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(self.path)
        write_json(self.path / self.RUN, {"status": "running", **asdict(print_)})

    def check_config(self, config: RESPConfig) -> None:
        """Refuse to resume a run of another recipe, saying what differs (`RESUME_NEUTRAL` fields may differ)."""
        saved = _dotted(RESPConfig.from_pretrained(self.path).to_dict())
        now = _dotted(config.to_dict())
        diff = {
            k: (saved.get(k), now.get(k))
            for k in sorted(saved.keys() | now.keys())
            if saved.get(k) != now.get(k) and k not in RESUME_NEUTRAL
        }
        if diff:
            raise ValueError(
                f"{self.path} holds a RESP run with a different config (saved vs now: {diff}); use another output "
                "folder, or the saved config to resume it."
            )

    def check_resume(self, config: RESPConfig, print_: Fingerprint) -> None:
        """Refuse to resume a run of another recipe, model or calibration set, saying what differs."""
        self.check_config(config)
        record = self._record()
        if "model" not in record:  # a run folder written before fingerprints: nothing to compare
            logger.warning("%s records no fingerprint of its model; resuming without checking it.", self.path)
            return
        saved_print = Fingerprint(record.get("source", "?"), record["model"], record["prompts"])
        differences = saved_print.differences(print_)
        if differences:
            raise ValueError(
                f"{self.path} holds a RESP run of another model or calibration set: {' and '.join(differences)} "
                "differ from this prune's. Use another output folder (or the same model and prompts to resume)."
            )

    def resume(self, config: RESPConfig, print_: Fingerprint) -> None:
        """Take up the run again (after `check_resume`): the recipe as it now is (a `RESUME_NEUTRAL` field may
        have changed) and status running, with the fingerprint of a record that had none."""
        config.save_pretrained(self.path)
        record = {k: v for k, v in self._record().items() if k != "reason"}
        write_json(self.path / self.RUN, {**asdict(print_), **record, "status": "running"})

    @property
    def status(self) -> str | None:
        """`running`, `stopped` (see `reason`) or `finished`; None when no run was started here."""
        return self._record().get("status") if self.is_run else None

    @property
    def reason(self) -> str | None:
        """Why a stopped run stopped (the error it was refused or interrupted with)."""
        return self._record().get("reason") if self.is_run else None

    def mark_stopped(self, reason: str) -> None:
        """Record that the run stopped before its end, and why: running the same command (corrected) resumes."""
        write_json(self.path / self.RUN, {**self._record(), "status": "stopped", "reason": reason})

    def mark_finished(self) -> None:
        record = {k: v for k, v in self._record().items() if k != "reason"}
        write_json(self.path / self.RUN, {**record, "status": "finished"})

    def remove_run(self) -> None:
        """Remove what a run keeps besides its model (record, traces, stages), so an overwritten folder does not
        pass for the run it held."""
        for name in (self.RUN, self.SELECTED, self.DENSE_TRACES):
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / self.STAGES, ignore_errors=True)
        shutil.rmtree(self.path / self.RECOVERY, ignore_errors=True)

    def clean(self) -> list[Path]:
        """Remove what interrupted writes left behind (temp files, unfinished stage folders)."""
        stray = [p for p in self.path.glob(f".*{TMP_SUFFIX}") if p.is_file()]
        stray += [p for p in (self.path / self.STAGES).glob(".stage_*") if p.is_dir()]
        for p in stray:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        if stray:
            logger.info("Removed %d leftover(s) of interrupted writes from %s", len(stray), self.path)
        return stray

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder (`.resp.lock`, released by the OS if the process dies).

        Re-entrant on this RunFolder (another RunFolder of the same folder, in this process or another, is
        refused). The lock file is never removed: a process that opened it just before a removal would lock
        the removed file while a third process locked a new one, and both would prune into the folder.
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # not POSIX (Windows): no lock
            yield
            return
        with open(self.path / self.LOCK, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "another process"
                raise ValueError(
                    f"{self.path} is in use by another prune ({owner}). Wait for it to finish (running the same "
                    "command again then resumes), or choose another output folder."
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
                handle.seek(0)
                handle.truncate()
                handle.flush()
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ calibration

    def save_selected(self, prompts: Sequence[CalibrationPrompt]) -> None:
        write_json(self.path / self.SELECTED, [p.question for p in prompts])

    def load_selected(self, prompts: Sequence[CalibrationPrompt]) -> list[CalibrationPrompt] | None:
        """The prompts SSGR kept in this run, in `prompts`' order; None when it selected nothing."""
        if not (self.path / self.SELECTED).is_file():
            return None
        kept = set(read_json(self.path / self.SELECTED))
        return [p for p in prompts if p.question in kept]

    def save_dense_traces(self, traces: Sequence[Trace]) -> None:
        save_traces(traces, self.path / self.DENSE_TRACES)

    def load_dense_traces(self) -> list[Trace] | None:
        path = self.path / self.DENSE_TRACES
        return load_traces(path) if path.is_file() else None

    # ------------------------------------------------------------------ stages

    def stage_dirs(self) -> list[Path]:
        stages = self.path / self.STAGES
        return sorted(p for p in stages.glob("stage_*") if p.is_dir()) if stages.is_dir() else []

    def save_stage(self, checkpoint: StageCheckpoint) -> Path:
        """Write a finished stage into a temp folder, then rename it into place in one step. The stage's record
        (written last) gets the cost of writing the rest as its `checkpoint` phase."""
        stages = self.path / self.STAGES
        stages.mkdir(exist_ok=True)
        clock = PhaseClock()
        with clock("checkpoint"):
            tmp = Path(tempfile.mkdtemp(dir=stages, prefix=f".stage_{checkpoint.stage:03d}."))
            os.chmod(tmp, default_mode(directory=True))
            write_json(tmp / "plan.json", checkpoint.plan.to_dict())
            save_traces(checkpoint.traces, tmp / "traces.jsonl")
            atomic_write(tmp / "rng.pt", lambda p: torch.save(checkpoint.rng_state, p))
            if checkpoint.added_biases:
                atomic_write(tmp / self.BIASES, lambda p: save_file(checkpoint.added_biases, str(p)))
        if checkpoint.history:
            checkpoint.history[-1].phases.update(clock.take())
        record = {"history": [h.to_dict() for h in checkpoint.history], "regenerated": checkpoint.regenerated}
        write_json(tmp / "record.json", record)
        final = stages / f"stage_{checkpoint.stage:03d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for earlier in self.stage_dirs():  # a resume needs only the last stage
            if earlier != final:
                shutil.rmtree(earlier)
        return final

    def load_history(self) -> list[StageRecord]:
        """The stage records of the last finished stage ([] before stage 1): cheap, for `info`."""
        dirs = self.stage_dirs()
        if not dirs:
            return []
        return [StageRecord.from_dict(h) for h in read_json(dirs[-1] / "record.json")["history"]]

    def last_stage(self) -> StageCheckpoint | None:
        """The state after the last finished stage, or None before stage 1; a stage folder with a file missing
        or damaged is refused, naming the file and the fix."""
        dirs = self.stage_dirs()
        if not dirs:
            return None
        last = dirs[-1]
        try:
            record = read_json(last / "record.json")
            biases = last / self.BIASES
            return StageCheckpoint(
                plan=PruningPlan.from_dict(read_json(last / "plan.json")),
                history=[StageRecord.from_dict(h) for h in record["history"]],
                regenerated=list(record["regenerated"]),
                traces=load_traces(last / "traces.jsonl"),
                rng_state=torch.load(last / "rng.pt", weights_only=True),
                added_biases=load_file(biases) if biases.is_file() else {},
            )
        except FileNotFoundError as err:
            problem = f"it has no {Path(err.filename).name}" if err.filename else str(err)
        except Exception as err:  # noqa: BLE001 - JSON, pickle, safetensors and schema errors alike
            problem = f"{type(err).__name__}: {err}"
        raise ValueError(
            f"The checkpoint {last} is incomplete or damaged ({problem}). Delete that folder and run the same "
            "command again: the run then resumes from what is left (an earlier stage, or its dense traces), or choose "
            "another output folder."
        )

    # ------------------------------------------------------------------ the result

    def save_report(self, report: PruneReport) -> None:
        write_json(self.path / self.REPORT, report.to_dict())

    def load_report(self) -> PruneReport | None:
        path = self.path / self.REPORT
        return PruneReport.from_dict(read_json(path)) if path.is_file() else None


def _same_folder(path: Path, other: str | os.PathLike) -> bool:
    """Whether `path` and `other` are one existing folder (through symlinks and relative paths alike)."""
    other_path = Path(os.fspath(other)).expanduser()
    try:
        return path.is_dir() and other_path.is_dir() and os.path.samefile(path, other_path)
    except OSError:
        return False
