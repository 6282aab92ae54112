"""RESPPruner: self-reflective structured pruning, stage by stage.

The algorithm (RESP, arXiv 2512.02185), as `prune` runs it:

    traces <- the model answers the calibration prompts itself (chat template, thinking on)
    for each stage k, with sparsity s_k rising linearly to the target:
        if the model's sparsity has crossed a regeneration milestone:
            traces <- the *pruned* model answers the same prompts again
        scores <- decode-only first-order Taylor importance |W * dL/dW| per structure on the traces
        plan   <- remove the least important heads / KV groups / channels (one global ranking)
                  until s_k of the dense decoder-linear parameters are gone
        model  <- the physically smaller model (real module surgery, not masks)
        checkpoint stage k (keep-sets, traces, scores), so a killed run resumes after it
    export the final model (uniform or per_layer)

`prune` below is that box, one short method per line of it. Each step is one call into a room below:
`calibration` (traces), `importance` (scores, and a criterion's own step after surgery), `allocation`
(plans), `surgery` (smaller models), `run_folder` (checkpoints and resume), `report` (what happened).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel

from .accounting import SizeReport, decoder_linear_params, size_report
from .allocation import allocate, max_removable_params
from .architectures import LayerSizes, get_architecture, layer_sizes
from .calibration import (
    CalibrationPrompt,
    Trace,
    TraceGenerator,
    as_prompts,
    build_traces,
    chat_prompts,
    check_traces,
    get_generator,
    load_traces,
    save_traces,
    select_by_difficulty,
    trace_token_ids,
)
from .compensation import add_biases
from .configuration_resp import RESPConfig
from .files import umask_permissions
from .generation import encode_prompts
from .importance import Scorer, build_examples, scorer_class
from .loading import load_model, load_model_config, load_tokenizer
from .memory import ScoringMemoryEstimate, release_heap
from .profiling import PhaseClock
from .recovery import RecoveryData
from .report import PruneReport, RecoveryRecord, StageRecord
from .run_folder import RunFolder, StageCheckpoint, fingerprint
from .runtimes import checkpoint_traits, export_target
from .surgery import LayerKeep, PruningPlan, prune_model

logger = logging.getLogger(__name__)

__all__ = ["MANY_STAGES", "PruneResult", "RESPPruner", "compose_plans"]

MANY_STAGES = 128
"""Above this many stages a prune is warned about: each stage is a scoring pass over every trace, and in
benchmarks/RESULTS.md the default 8 came within the 95% interval of the best count, 16 (the reference uses 112)."""


def _correct_fraction(traces: list[Trace]) -> float | None:
    """Fraction of the judged traces that answer correctly (None when none could be judged)."""
    judged = [t.correct for t in traces if t.correct is not None]
    return sum(judged) / len(judged) if judged else None


def _reason(err: BaseException) -> str:
    """Why a run stopped, in a line for its record."""
    return "interrupted" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"


def _own_storage(model: PreTrainedModel, other: PreTrainedModel) -> PreTrainedModel:
    """`model` with its own copy of every tensor it shares with `other` (surgery shares the tensors it does not
    cut), so training `model` in place leaves `other` as it was; tied weights stay tied."""
    theirs = {t.data_ptr() for t in other.state_dict().values() if t.device.type != "meta"}
    with torch.no_grad():
        for module in model.modules():
            for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
                if tensor.data_ptr() in theirs:
                    tensor.data = tensor.data.clone()
    return model


def compose_plans(outer: PruningPlan, inner: PruningPlan) -> PruningPlan:
    """Keep-sets against the dense model after applying `outer`, then `inner` (indexed against outer's result)."""
    return PruningPlan(
        tuple(
            LayerKeep(
                tuple(o.query_heads[i] for i in n.query_heads),
                tuple(o.kv_heads[g] for g in n.kv_heads),
                tuple(o.channels[c] for c in n.channels),
            )
            for o, n in zip(outer.layers, inner.layers, strict=True)
        )
    )


@dataclass
class PruneResult:
    """The pruned model and what happened: per-layer sizes, sparsity, and each stage's record."""

    model: PreTrainedModel
    plan: PruningPlan  # keep-sets against the dense model
    report: PruneReport
    stages: list[StageRecord] = field(default_factory=list)


@dataclass
class _State:
    """Where a prune stands between stages: the current model and what the next stage needs."""

    prompts: list[CalibrationPrompt]
    model: PreTrainedModel
    plan: PruningPlan  # keep-sets against the dense model
    traces: list[Trace]
    dense_traces: list[Trace]
    history: list[StageRecord] = field(default_factory=list)
    regenerated: list[float] = field(default_factory=list)  # milestones already crossed


def _fit_config(model_config: PretrainedConfig, config: RESPConfig) -> RESPConfig:
    """`config` with max_length clamped to the model's positions (a longer example cannot be scored) and without the
    structure kinds its runtimes' loaders cannot take for this architecture (each change logged once: a fitted
    config fits unchanged); an export that no prune of this model makes load in one of its runtimes is refused."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions and config.max_length > positions:
        logger.warning(
            "max_length=%d is above the model's %d positions (max_position_embeddings): using %d.",
            config.max_length,
            positions,
            positions,
        )
        config = dataclasses.replace(config, max_length=positions)
    export = config.export
    target = export_target(
        export.mode,
        export.runtimes,
        get_architecture(model_config).model_type,
        checkpoint_traits(model_config),
    )
    if target.refusals:
        raise ValueError(target.refusals[0])
    structures = [s for s in config.structures if s not in target.kept]
    if structures == config.structures:
        return config
    why = "; ".join(dict.fromkeys(target.kept.values()))
    if not structures:
        raise ValueError(
            f"runtimes={export.runtimes} leaves nothing to prune from structures {config.structures}: {why}. "
            "Add 'channels' to structures, or export per_layer for a runtime that loads it."
        )
    logger.info("Pruning %s only, for runtimes %s: %s.", ", ".join(structures), export.runtimes, why)
    return dataclasses.replace(config, structures=structures)


def _read_origin(
    source: str | os.PathLike, model_config: PretrainedConfig
) -> tuple[SizeReport | None, tuple[int, str] | None]:
    """The sizes of the original dense model, when the source folder's resp_report.json records the prune this
    model is (its pruned sizes are the model's): a prune of a prune counts sparsity against that model. With it,
    what to log about it (a level and a line), for the pruner to say once."""
    folder = Path(source).expanduser()
    if not (folder / RunFolder.REPORT).is_file():
        return None, None
    try:
        size = RunFolder(folder).load_report().size
    except (ValueError, KeyError, TypeError) as err:
        return None, (
            logging.WARNING,
            f"Ignoring {folder} ({err}): sparsity counts against the model as loaded.",
        )
    same_type = size.model_type == get_architecture(model_config).model_type
    if not same_type or size.pruned_layers != tuple(layer_sizes(model_config)):
        return None, (
            logging.WARNING,
            f"{folder}/{RunFolder.REPORT} describes other layer sizes than the model: sparsity counts against the "
            "model as loaded.",
        )
    return size, (
        logging.INFO,
        f"{folder} is a prune (sparsity {size.sparsity:.1%}) of a dense model recorded in its {RunFolder.REPORT}: "
        "sparsity counts against that model, so target_sparsity is the sparsity this prune ends at.",
    )


def _dense_and_start(model_config: PretrainedConfig, origin: SizeReport | None) -> tuple[int, float]:
    """The dense model's decoder-linear parameters (the original one's when the model is a prune of it), and the
    sparsity the model already has against it (0 for a dense model)."""
    dense = sum(origin.dense_layer_params if origin is not None else decoder_linear_params(model_config))
    return dense, 1 - sum(decoder_linear_params(model_config)) / dense


def _check_recipe(
    model_config: PretrainedConfig,
    c: RESPConfig,
    origin: SizeReport | None,
    scorer: Scorer,
    task: str | None,
    tokenizer=None,
) -> None:
    """Refuse, from the model's config alone (no weight needed), a recipe this model cannot take: see
    `RESPPruner.check_recipe`."""
    if tokenizer is not None and len(tokenizer) > model_config.vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's embedding has {model_config.vocab_size} rows: "
            "they do not belong together. Load the tokenizer saved with this model."
        )
    sizes = layer_sizes(model_config)
    widths = [s.intermediate_size for s in sizes]
    if "channels" in c.structures and c.export.channel_multiple >= min(widths):
        raise ValueError(
            f"channel_multiple={c.export.channel_multiple} is not below this model's narrowest MLP "
            f"({min(widths)} channels), so no channel of it could ever be removed (widths stay multiples of "
            f"it, and never reach zero). Use a multiple below {min(widths)} (64 or 128 suit real models), or "
            "leave 'channels' out of structures."
        )
    if c.export.mode == "uniform" and len(set(sizes)) > 1:
        raise ValueError(
            "export='uniform' needs every layer alike, but this model's layers already differ (it is a "
            "per_layer prune), and uniform allocation removes the same from each layer. Use export='per_layer'."
        )
    protected = c.export.protected_for(model_config.num_hidden_layers)
    dense, start = _dense_and_start(model_config, origin)
    if origin is not None and c.target_sparsity <= start + 1e-9:
        raise ValueError(
            f"This model is already a prune at sparsity {start:.2%} of its original dense model (its "
            f"{RunFolder.REPORT}), and sparsity counts against that model: target_sparsity={c.target_sparsity} "
            f"would remove nothing. Set a target above {start:.2%}."
        )
    needed = math.ceil(c.target_sparsity * dense) - (dense - sum(decoder_linear_params(model_config)))
    limit = max_removable_params(model_config, protected, c.structures, c.export.channel_multiple)
    if needed > limit:
        more = " more" if origin is not None else ""
        raise ValueError(
            f"target_sparsity={c.target_sparsity} asks to remove {needed:,}{more} of {dense:,} decoder-linear "
            f"parameters, but with protected layers {protected}, structures {c.structures} and "
            f"channel_multiple {c.export.channel_multiple} at most {limit:,} ({limit / dense:.1%}) can go. Lower "
            "target_sparsity, protect fewer layers or lower channel_multiple."
        )
    scorer.check(model_config, c.export)
    if (c.calibration.filter_correct or c.calibration.selection_difficulty_samples) and task is None:
        raise ValueError(
            "filter_correct and difficulty selection judge answers: pass task='gsm8k' or 'mathqa'."
        )


class RESPPruner:
    """Prunes a reasoning model with RESP; `prune` returns the physically smaller model and a report."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer,
        config: RESPConfig | dict[str, Any] | str | os.PathLike | None = None,
        task: str | None = None,
        generator: str | TraceGenerator = "auto",
        scorer: Scorer | None = None,
        source: str | None = None,
    ) -> None:
        self.spec = get_architecture(model)  # unsupported architectures fail here, before any work
        self.model = model
        self.config = _fit_config(model.config, RESPConfig.coerce(config))
        self.tokenizer = tokenizer
        self.task = task
        self.generator = get_generator(generator) if isinstance(generator, str) else generator
        self.scorer = scorer or scorer_class(self.config.importance).from_config(
            self.config.scoring, seed=self.config.seed
        )
        self.source = source or getattr(model.config, "_name_or_path", None) or type(model).__name__
        # Training passes (scoring, recovery) switch use_cache off; the exported model keeps the user's.
        self._use_cache = getattr(model.config, "use_cache", True)
        # A model that is itself a prune (its folder's resp_report.json says of what) is pruned further: sparsity
        # counts against the original dense model, and the stages ramp from where the model already is.
        self.origin, note = _read_origin(self.source, model.config)
        if note is not None:
            logger.log(*note)
        self._dense_params, self._start = _dense_and_start(model.config, self.origin)
        # The run folder of the last prune (save_pretrained writes there freely), and every folder it wrote.
        self._run: RunFolder | None = None
        self._saved_to: set[Path] = set()
        # A pruner that loaded its model (from_pretrained) frees the dense weights once the first stage has cut
        # its smaller copy: a resume rebuilds from a fresh load, so keeping them would only double the memory.
        self._owns_model = False
        self._dense_released = False
        self.scoring_memory: ScoringMemoryEstimate | None = None  # what prune checked before any work
        self._scorer_prepared = False  # for this prune: `Scorer.prepare` ran
        self._check_inputs()
        self.result: PruneResult | None = None

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | os.PathLike,
        config: RESPConfig | dict[str, Any] | str | os.PathLike | None = None,
        tokenizer=None,
        **kwargs: Any,
    ) -> RESPPruner:
        """Load the model (Hub id or local folder) and its tokenizer; `config` is a RESPConfig, a dict of its
        fields, or a resp_config.json path (checked before the model loads).

        `task`, `generator` and `scorer` are taken from kwargs; the rest goes to `from_pretrained`. The pruner
        owns the model it loads: `prune` frees its dense weights after the first stage (they move to the meta
        device), so no dense copy sits beside the pruned one; a model passed to `RESPPruner(...)` is never freed.
        """
        own = {k: kwargs.pop(k) for k in ("task", "generator", "scorer") if k in kwargs}
        source = str(model_id_or_path)
        # Everything that needs no weights first: a missing local folder at once (not after Hub retries), a
        # damaged one naming its file, its weights against its config, then the recipe against the model's config
        # and the tokenizer (a channel multiple or a target this model cannot take) before the weights load.
        model_config = load_model_config(model_id_or_path, **kwargs)
        if tokenizer is None:
            tokenizer = load_tokenizer(model_id_or_path)
        config = cls.check_recipe(
            model_config,
            config,
            source=source,
            task=own.get("task"),
            scorer=own.get("scorer"),
            tokenizer=tokenizer,
        )
        model = load_model(model_id_or_path, **kwargs)
        pruner = cls(model, tokenizer, config, source=source, **own)
        pruner._owns_model = True
        return pruner

    # ------------------------------------------------------------------------------------------
    # Checks that run before any expensive work.
    # ------------------------------------------------------------------------------------------

    @classmethod
    def check_recipe(
        cls,
        model_config: PretrainedConfig,
        config: RESPConfig | dict[str, Any] | str | os.PathLike | None = None,
        source: str | os.PathLike | None = None,
        task: str | None = None,
        scorer: Scorer | None = None,
        tokenizer=None,
    ) -> RESPConfig:
        """`config` fitted to the model (max_length to its positions, structures to what its runtimes load) and
        checked against the model's config alone, as a pruner of it would check it: an architecture, channel
        multiple, target or criterion this model cannot take is refused before any weight loads (`from_pretrained`
        and `optimum-resp prune` call this first). `source` is the model's folder (a prune's own says what it was
        pruned from); with `tokenizer`, that it belongs to the model. Returns the fitted config."""
        get_architecture(model_config)
        fitted = _fit_config(model_config, RESPConfig.coerce(config))
        origin = _read_origin(source, model_config)[0] if source is not None else None
        scorer = scorer or scorer_class(fitted.importance).from_config(fitted.scoring, seed=fitted.seed)
        _check_recipe(model_config, fitted, origin, scorer, task, tokenizer)
        return fitted

    def _check_inputs(self) -> None:
        c = self.config
        if not getattr(self.tokenizer, "chat_template", None) and c.calibration.source != "text":
            logger.warning(
                "The tokenizer has no chat template: calibration prompts fall back to a plain 'Question: ... "
                "Answer:' format, and thinking mode cannot be switched on."
            )
        _check_recipe(self.model.config, c, self.origin, self.scorer, self.task, self.tokenizer)

    def _check_prompt_lengths(self, prompts: list[CalibrationPrompt]) -> int | None:
        """Refuse prompts that leave no trace token to score under max_length; warn when a full-length trace
        would run past the model's positions. Returns the longest sequence a scoring pass can meet (None when
        the traces are data, not generated: their lengths are known when they are scored)."""
        c = self.config
        generation = c.calibration.generation
        if c.calibration.source == "text":
            return None
        chat = chat_prompts(self.tokenizer, prompts, generation.thinking)
        lengths = [len(i) for i in encode_prompts(self.tokenizer, chat)]
        too_long = [i for i, n in enumerate(lengths) if n >= c.max_length]
        if too_long:
            raise ValueError(
                f"Calibration prompts {too_long[:10]} are {max(lengths[i] for i in too_long)} tokens or more with "
                f"the chat template, but max_length={c.max_length} (prompt + trace tokens scored): no token of "
                "their traces could be scored. Raise max_length, or shorten or drop those prompts."
            )
        positions = getattr(self.model.config, "max_position_embeddings", None)
        # (max_length is already clamped to the positions, so a prompt filling them is refused above.)
        if positions and c.calibration.source == "self":
            if max(lengths) + generation.max_new_tokens > positions:
                logger.warning(
                    "The longest calibration prompt (%d tokens) plus max_new_tokens=%d exceeds the model's %d "
                    "positions: a trace that long runs past what the model was trained on.",
                    max(lengths),
                    generation.max_new_tokens,
                    positions,
                )
        if c.calibration.source != "self":
            return None
        return min(c.max_length, max(lengths) + generation.max_new_tokens)

    def _prepare_scorer(self, longest: int | None) -> None:
        """The scorer's own resource check (`Scorer.prepare`: memory, checkpointing, autocast), before any
        generation (or, for traces that are data, before the first scoring pass, at their real longest length)."""
        if longest is None:
            return
        reserve = 0
        if not self._owns_model:  # from stage 2 on, the dense model stays beside the copy being scored
            weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
            reserve = int(weights * (1 - self.config.stage_sparsities(self._start)[0]) / (1 - self._start))
        self.scoring_memory = self.scorer.prepare(self.model, longest, reserve)
        self._scorer_prepared = True

    # ------------------------------------------------------------------------------------------
    # The algorithm.
    # ------------------------------------------------------------------------------------------

    def prune(self, prompts, output_dir: str | os.PathLike | RunFolder | None = None) -> PruneResult:
        """Run RESP on the calibration prompts; with `output_dir`, checkpoint every stage and resume.

        A run that stops (refused, failed or interrupted) records why in the folder, keeps what it finished
        (the dense traces, the last stage) and resumes from there when run again, corrected."""
        if self._dense_released:
            raise RuntimeError(
                "This pruner freed its dense weights after its first prune (it loaded the model itself, so it "
                "keeps no dense copy beside the pruned one). Load it again with RESPPruner.from_pretrained to "
                "prune again; with the same output_dir, a finished run is reused."
            )
        given = as_prompts(prompts)
        prompts = given[: self.config.calibration.num_prompts]
        self._spare_prompts = given[len(prompts) :]  # recovery's extra traces, when its token budget asks
        self._check_recovery_budget(len(given))
        if self.config.num_stages > MANY_STAGES:  # said once per prune, before any work
            logger.warning(
                "num_stages=%d: every stage is one scoring pass over all traces, so this prune costs %d of them "
                "(in benchmarks/RESULTS.md the default 8 came within the 95%% interval of the best count, 16; the "
                "RESP reference uses 112). Only the last stage's checkpoint is kept.",
                self.config.num_stages,
                self.config.num_stages,
            )
        run = output_dir if isinstance(output_dir, RunFolder | None) else RunFolder(output_dir)
        # Not the model's own folder, writable, empty or a run of this recipe: checked first, writing nothing.
        if run is not None:
            run.check_can_start(self.config, self.source)
        # Phases are measured where the model is now (the CLI moves it after building the pruner).
        self._clock = PhaseClock(next(self.model.parameters()).device)
        # Before any generation, and before a run folder is written:
        self.scoring_memory, self._scorer_prepared = None, False
        longest = self._check_prompt_lengths(prompts)
        self._prepare_scorer(longest)
        if self.config.recovery is not None and longest is not None:
            self.config.recovery.check_memory(self.model, longest, self.config.target_sparsity)
        # A second prune into the same folder is refused while this one runs.
        with run.lock() if run is not None else contextlib.nullcontext():
            resumed = self._open_run(prompts, run)
            try:
                state = self._start_or_resume(prompts, run, resumed)
                recovery_data = self._prepare_recovery(state, run)  # while the dense model is loaded
                for k, target in enumerate(self.config.stage_sparsities(self._start)):
                    if k >= len(state.history):
                        state = self._stage(state, k, target, run)
                model, recovery = self._recover(state.model, recovery_data)
                self.result = self._export(model, state, recovery)
            except BaseException as err:
                if run is not None:
                    with contextlib.suppress(Exception):  # the error itself matters more than its record
                        run.mark_stopped(_reason(err))
                raise
        return self.result

    def _open_run(self, prompts: list[CalibrationPrompt], run: RunFolder | None) -> bool:
        """Start the run in its folder, or take it up again when it holds this run (another recipe, model or
        calibration set is refused); True when it resumes."""
        if run is None:
            return False
        seen = fingerprint(self.model, prompts, self.source)
        resumed = run.is_run
        if resumed:
            run.check_resume(self.config, seen)
            run.clean()
            run.resume(self.config, seen)
        else:
            run.start(self.config, seen)
        self._run = run
        self._saved_to.add(run.path.resolve())
        return resumed

    def _start_or_resume(
        self, prompts: list[CalibrationPrompt], run: RunFolder | None, resumed: bool
    ) -> _State:
        """The state before the next stage: after the last checkpointed stage, or the dense model and its
        traces (those a stopped run saved, when there are)."""
        selected = dense_traces = None
        if resumed:
            selected, dense_traces = run.load_selected(prompts), run.load_dense_traces()
            checkpoint = run.last_stage()
            if checkpoint is not None:
                return self._resume(checkpoint, selected or prompts, dense_traces)
        if selected is not None:
            prompts = selected
        elif self.config.calibration.selection_difficulty_samples:
            prompts = self._select(prompts, run)
        if dense_traces is None:
            dense_traces = self._calibrate(self.model, prompts, stage=0, run=run)
        else:
            logger.info("Reusing the %d dense traces saved in %s", len(dense_traces), run.path)
            # Saved by a run that may have refused them.
            check_traces(dense_traces, self.config.calibration, dense=True)
        plan = PruningPlan.full(self.model.config)
        crossed = [m for m in self.config.regeneration_milestones if m <= self._start + 1e-9]
        return _State(
            prompts, self.model, plan, traces=dense_traces, dense_traces=dense_traces, regenerated=crossed
        )

    def _stage(self, state: _State, k: int, target: float, run: RunFolder | None) -> _State:
        """One stage: regenerate if a milestone is due, score, allocate, cut, checkpoint."""
        c = self.config
        start = time.perf_counter()
        traces, regenerated = state.traces, state.regenerated
        due = [
            m
            for m in c.regeneration_milestones
            if m <= self._sparsity(state.model) + 1e-9 and m not in regenerated
        ]
        if due and c.calibration.source == "self":
            logger.info(
                "Stage %d: sparsity %.3f crossed milestone(s) %s: regenerating traces",
                k + 1,
                self._sparsity(state.model),
                due,
            )
            traces = self._regenerate(state.model, state.prompts, traces, stage=k)
            regenerated = sorted({*regenerated, *due})
        with self._clock("scoring") as cost:
            examples = build_examples(*trace_token_ids(self.tokenizer, traces), c.loss, c.max_length)
            if not self._scorer_prepared:  # traces from data: checked now, at their real lengths
                self._prepare_scorer(max(len(e["input_ids"]) for e in examples))
            scores = self.scorer.score(state.model, examples)
            cost.tokens = sum(len(e["input_ids"]) for e in examples)
        with self._clock("allocation"):
            step = self._allocate(state.model, scores, target)
        with self._clock("surgery"):
            model = self.scorer.after_surgery(
                state.model, prune_model(state.model, step, export="per_layer"), step
            )
        if state.model is self.model and self._owns_model:
            self._release_dense()
        stats = self.scorer.last_stats
        record = StageRecord(
            stage=k + 1,
            target_sparsity=target,
            sparsity=self._sparsity(model),
            regenerated=bool(due) and c.calibration.source == "self",
            num_traces=len(traces),
            mean_trace_tokens=sum(t.num_tokens for t in traces) / len(traces),
            truncated_fraction=sum(t.truncated for t in traces) / len(traces),
            correct_fraction=_correct_fraction(traces),
            calibration_loss=stats.mean_loss if stats else None,
            seconds=time.perf_counter() - start,
            phases=self._clock.take(),  # with the dense generation before stage 1
        )
        loss = "n/a" if record.calibration_loss is None else f"{record.calibration_loss:.4f}"
        logger.info(
            "Stage %d/%d: sparsity %.3f (target %.3f), calibration loss %s, %.1fs",
            k + 1,
            c.num_stages,
            record.sparsity,
            target,
            loss,
            record.seconds,
        )
        state = dataclasses.replace(
            state,
            model=model,
            plan=compose_plans(state.plan, step),
            traces=traces,
            history=[*state.history, record],
            regenerated=regenerated,
        )
        if run is not None:
            run.save_stage(self._checkpoint(state))  # adds the write's cost to the record as its `checkpoint`
        return state

    def _allocate(self, model: PreTrainedModel, scores, target: float) -> PruningPlan:
        """Keep-sets for `model` that bring the dense model's sparsity to `target` (one global ranking)."""
        c = self.config
        removed = self._dense_params - sum(decoder_linear_params(model.config))
        return allocate(
            model.config,
            scores,
            max(0, math.ceil(target * self._dense_params) - removed),
            c.export,
            structures=c.structures,
            normalization=c.normalization,
            dense_intermediate_size=self._dense_sizes()[0].intermediate_size,
        )

    def _dense_sizes(self) -> Sequence[LayerSizes]:
        """Per-layer sizes of the dense model: the original one when this model is a prune of it."""
        return self.origin.dense_layers if self.origin is not None else layer_sizes(self.model.config)

    def _check_recovery_budget(self, given: int) -> None:
        """Refuse, before any work, a recovery token budget the prompts given cannot supply even at full length."""
        c = self.config
        tokens = c.recovery.tokens if c.recovery is not None else None
        most = given * c.calibration.generation.max_new_tokens
        if tokens is not None and most < tokens:
            raise ValueError(
                f"recovery tokens={tokens:,} but the {given} prompts given yield at most {most:,} decode tokens "
                f"({given} x max_new_tokens {c.calibration.generation.max_new_tokens}). Pass more prompts (those past "
                f"num_calibration_prompts={c.calibration.num_prompts} feed recovery; the CLI loads them from the "
                "task's training split) or lower the recovery's tokens."
            )

    def _recovery_traces(self, dense_traces: list[Trace], run: RunFolder | None) -> list[Trace]:
        """The dense traces plus, while they hold fewer decode tokens than the recovery's budget, the dense model's
        answers to the spare prompts (in order; kept in the run folder, so a resumed prune continues after them)."""
        c = self.config
        budget = c.recovery.tokens
        have = sum(t.num_tokens for t in dense_traces)
        if budget is None or have >= budget:
            return dense_traces
        path = run.path / RunFolder.RECOVERY / "traces.jsonl" if run is not None else None
        extra = load_traces(path) if path is not None and path.is_file() else []
        answered = {t.question for t in extra}
        spare = [p for p in self._spare_prompts if p.question not in answered]
        have += sum(t.num_tokens for t in extra)
        mean = max(1.0, have / max(1, len(dense_traces) + len(extra)))
        while have < budget and spare:
            count = min(
                len(spare), max(c.calibration.generation.batch_size, math.ceil(1.1 * (budget - have) / mean))
            )
            batch, spare = spare[:count], spare[count:]
            with self._clock("recovery traces") as cost:
                new = build_traces(
                    self.model,
                    self.tokenizer,
                    batch,
                    c.calibration,
                    self.generator,
                    self.task,
                    seed=c.seed + 104729 + len(extra),
                )
                cost.tokens = sum(t.num_tokens for t in new)
            extra += new
            have += cost.tokens
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_traces(extra, path)
        if have < budget:
            logger.warning(
                "Recovery asked for %d decode tokens; the dense model's answers to every prompt given hold %d.",
                budget,
                have,
            )
        logger.info(
            "Recovery learns from %d traces (%d decode tokens).", len(dense_traces) + len(extra), have
        )
        return [*dense_traces, *extra]

    def _prepare_recovery(self, state: _State, run: RunFolder | None) -> RecoveryData | None:
        """The recovery's data (the dense traces, the run folder's `recovery/`), and what it takes from the dense
        model before the first stage frees it (distillation: the teacher's targets; phase "recovery teacher")."""
        c = self.config
        if c.recovery is None:
            return None
        data = RecoveryData(
            self.tokenizer,
            self._recovery_traces(state.dense_traces, run),
            c.max_length,
            c.seed,
            run.path / RunFolder.RECOVERY if run is not None else None,
        )
        with self._clock("recovery teacher"):
            c.recovery.prepare(self.model, data)
        return data

    def _recover(
        self, model: PreTrainedModel, data: RecoveryData | None
    ) -> tuple[PreTrainedModel, RecoveryRecord | None]:
        """The configured recovery of the pruned model (its adapters, if any, merged into the weights)."""
        c = self.config
        if c.recovery is None or data is None:
            return model, None
        if not self._dense_released:  # recovery trains in place: the dense model must not learn with it
            model = _own_storage(model, self.model)
        result = c.recovery.run(model, data)
        return result.model, RecoveryRecord(
            c.recovery.method,
            result.train_loss,
            result.seconds,
            result.trainable_parameters,
            tokens=result.tokens,
            kl_before=result.kl_before,
            kl_after=result.kl_after,
        )

    def _export(self, model: PreTrainedModel, state: _State, recovery: RecoveryRecord | None) -> PruneResult:
        """The model in the configured export mode, with the user's use_cache and the report."""
        c = self.config
        final = (
            prune_model(model, PruningPlan.full(model.config), export=c.export.mode)
            if c.export.mode == "uniform"
            else model
        )
        final.config._name_or_path = self.source
        final.config.use_cache = self._use_cache
        size = size_report(self.model, final)
        report = PruneReport(
            size=size.with_dense(self.origin) if self.origin is not None else size,
            stages=state.history,
            source=self.source,
            resp_config=c,
            recovery=recovery,
            checkpoint_traits=sorted(checkpoint_traits(final.config)),
        )
        if (
            c.export.mode == "uniform"
        ):  # a stock checkpoint some runtime refuses is a surprise worth a warning
            for support in report.runtime_support():
                if not support.loads:
                    logger.warning(
                        "This uniform export will not load in %s: %s.", support.runtime, support.how
                    )
        return PruneResult(final, state.plan, report, state.history)

    # ------------------------------------------------------------------------------------------
    # Calibration: SSGR selection, dense traces, regeneration.
    # ------------------------------------------------------------------------------------------

    def _select(self, prompts: list[CalibrationPrompt], run: RunFolder | None) -> list[CalibrationPrompt]:
        """SSGR: the hardest prompts by the dense model's failure rate (saved, so a resume keeps them)."""
        with self._clock("selection"):
            selected, _ = select_by_difficulty(
                self.model,
                self.tokenizer,
                prompts,
                self.config.calibration,
                self.generator,
                self.task,
                self.config.seed,
            )
        if run is not None:
            run.save_selected(selected)
        logger.info("SSGR selection kept %d of %d prompts", len(selected), len(prompts))
        return selected

    def _regenerate(
        self, model, prompts: list[CalibrationPrompt], traces: list[Trace], stage: int
    ) -> list[Trace]:
        """New traces from the pruned model, for all prompts or a seeded `regeneration_fraction` of them."""
        fraction = self.config.regeneration_fraction
        if fraction >= 1.0:
            return self._calibrate(model, prompts, stage)
        count = max(1, round(fraction * len(prompts)))
        chosen = sorted(random.Random(self.config.seed + stage).sample(range(len(prompts)), count))
        fresh = {t.question: t for t in self._calibrate(model, [prompts[i] for i in chosen], stage)}
        redo = {prompts[i].question for i in chosen}
        kept = [t for t in traces if t.question not in redo]
        return kept + [fresh[q] for q in (prompts[i].question for i in chosen) if q in fresh]

    def _calibrate(
        self, model, prompts: list[CalibrationPrompt], stage: int, run: RunFolder | None = None
    ) -> list[Trace]:
        """Traces for the prompts from the current model (checked: see `check_traces`); each stage draws from
        its own seed. The dense model's are saved in `run` before the check: a run refused for them resumes
        with them once corrected (e.g. with allow_unfinished_traces), instead of generating them again."""
        dense = model is self.model
        with self._clock("dense generation" if dense else "regeneration") as cost:
            traces = build_traces(
                model,
                self.tokenizer,
                prompts,
                self.config.calibration,
                self.generator,
                self.task,
                seed=self.config.seed + 7919 * stage,
            )
            cost.tokens = sum(t.num_tokens for t in traces)
            # Generation's freed buffers (KV caches, logits) stay in glibc's arenas; the scoring pass that comes
            # next would land beside them instead of in them.
            release_heap()
        if dense and run is not None:
            run.save_dense_traces(traces)
        check_traces(traces, self.config.calibration, dense=dense)
        return traces

    # ------------------------------------------------------------------------------------------
    # Checkpoints.
    # ------------------------------------------------------------------------------------------

    def _release_dense(self) -> None:
        """Free the dense weights (the model moves to the meta device: its config and names stay readable)."""
        self.model.to("meta")
        # Moving to meta unties shared weights (embeddings and lm_head): tie them again, or counts go wrong.
        if hasattr(self.model, "tie_weights"):
            self.model.tie_weights()
        self._dense_released = True
        release_heap()
        logger.info("Freed the dense model's weights: the pruned copy is all a later stage needs.")

    def _sparsity(self, model: PreTrainedModel) -> float:
        return 1 - sum(decoder_linear_params(model.config)) / self._dense_params

    def _checkpoint(self, state: _State) -> StageCheckpoint:
        dense_names = set(self.model.state_dict())  # names only: readable after the weights were freed
        added = {  # biases a criterion added (bias compensation): the plan alone cannot rebuild them
            n: t.detach().contiguous().cpu()
            for n, t in state.model.state_dict().items()
            if n not in dense_names
        }
        return StageCheckpoint(
            state.plan, state.history, state.regenerated, state.traces, torch.get_rng_state(), added
        )

    def _resume(
        self, checkpoint: StageCheckpoint, prompts: list[CalibrationPrompt], dense_traces: list[Trace] | None
    ) -> _State:
        torch.set_rng_state(checkpoint.rng_state)
        model = add_biases(
            prune_model(self.model, checkpoint.plan, export="per_layer"), checkpoint.added_biases
        )
        logger.info("Resuming after stage %d of %d", checkpoint.stage, self.config.num_stages)
        return _State(
            prompts,
            model,
            checkpoint.plan,
            traces=checkpoint.traces,
            dense_traces=dense_traces or [],
            history=checkpoint.history,
            regenerated=checkpoint.regenerated,
        )

    # ------------------------------------------------------------------------------------------
    # Output.
    # ------------------------------------------------------------------------------------------

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        eval_results: list[dict] | None = None,
        command: str | None = None,
        base_model: str | None = None,
        license: str | None = None,
        model_id: str | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write the pruned model, tokenizer, resp_config.json, the report (resp_report.json) and a model card.

        `eval_results` are `evaluate_model(...).summary` dicts (shown in the card and its model-index);
        `command` is the command that reproduces the model; `base_model` the Hub id when the model was
        loaded from a local folder. The folder the dense model was loaded from is never written to; a folder
        that holds anything but this prune's own run (its `output_dir`) or an earlier save of it is refused
        unless `overwrite=True`, which also removes another run's records there (its resume state would no
        longer describe the folder's model).
        """
        from .model_card import write_model_card

        if self.result is None:
            raise ValueError("Nothing to save yet: call prune() first.")
        own = self._run is not None and Path(save_directory).resolve() == self._run.path.resolve()
        run = self._run if own else RunFolder(save_directory)
        run.check_can_save(self.source, overwrite=overwrite or run.path.resolve() in self._saved_to)
        if run.is_run and run.path.resolve() not in self._saved_to:  # overwriting another run
            with run.lock():  # not while another prune runs there
                run.remove_run()
        run.path.mkdir(parents=True, exist_ok=True)
        with run.lock() if run.is_run else contextlib.nullcontext():
            with umask_permissions(run.path):
                self.result.model.save_pretrained(run.path)
                self.tokenizer.save_pretrained(run.path)
            self.config.save_pretrained(run.path)
            run.save_report(self.result.report)
            write_model_card(
                run.path,
                report=self.result.report,
                base_model=base_model or self.source,
                eval_results=eval_results,
                license=license,
                command=command,
                model_id=model_id,
            )
            if run.is_run:
                run.mark_finished()
        self._saved_to.add(run.path.resolve())
        return run.path

    def push_to_hub(
        self,
        repo_id: str,
        save_directory: str | os.PathLike | None = None,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str | None = None,
        create_pr: bool = False,
        revision: str | None = None,
        endpoint: str | None = None,
        **card_kwargs: Any,
    ) -> str:
        """Save (model, tokenizer, config, report, card) and upload the folder; returns the commit URL.

        Without a token or while offline this fails before anything is written or sent; a failed upload
        leaves the saved folder complete, to be pushed again.
        """
        from .hub import check_can_push, check_hub_reachable, push_to_hub

        token = check_can_push(repo_id, token)  # offline or no token: refused before anything is written
        check_hub_reachable(token, endpoint)  # no network, or a token the Hub refuses: the same
        directory = self.save_pretrained(
            save_directory or tempfile.mkdtemp(prefix="resp-push-"), model_id=repo_id, **card_kwargs
        )
        return push_to_hub(
            directory,
            repo_id,
            private=private,
            token=token,
            commit_message=commit_message,
            create_pr=create_pr,
            revision=revision,
            endpoint=endpoint,
        )
