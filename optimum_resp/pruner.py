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

Each step is one call into a room below: `calibration` (traces), `importance` (scores),
`allocation` (plans), `surgery` (smaller models), `accounting` (reports).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .accounting import SPARSITY_DEFINITION, decoder_linear_params, size_report
from .allocation import allocate, max_removable_params
from .architectures import get_architecture, layer_sizes
from .calibration import (
    CalibrationPrompt,
    Trace,
    TraceGenerator,
    as_prompts,
    build_traces,
    get_generator,
    load_traces,
    save_traces,
    select_by_difficulty,
)
from .configuration_resp import RESPConfig
from .generation import adds_special_tokens, build_prompt
from .hub import check_model_source
from .importance import build_examples, check_bias_compensation, get_scorer, save_scores
from .importance.base import Scorer
from .modeling.modeling_resp import DOWN_PROJ_BIAS, O_PROJ_BIAS
from .recovery import recover_with_lora
from .surgery import LayerKeep, PruningPlan, prune_model

logger = logging.getLogger(__name__)

__all__ = ["PruneResult", "RESPPruner", "compose_plans"]

RUN_FILE = "resp_run.json"
DENSE_TRACES = "dense_traces.jsonl"
BIASES_FILE = "added_biases.safetensors"
SELECTED_FILE = "selected_prompts.json"
REPORT_FILE = "resp_report.json"
STAGES_DIR = "stages"
LOCK_FILE = ".resp.lock"


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
    report: dict[str, Any]
    stages: list[dict[str, Any]] = field(default_factory=list)


class RESPPruner:
    """Prunes a reasoning model with RESP; `prune` returns the physically smaller model and a report."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer,
        config: RESPConfig | None = None,
        task: str | None = None,
        generator: str | TraceGenerator = "auto",
        scorer: Scorer | None = None,
        source: str | None = None,
    ) -> None:
        self.spec = get_architecture(model)  # unsupported architectures fail here, before any work
        self.model = model
        self.config = self._fit_max_length(config or RESPConfig())
        self.tokenizer = tokenizer
        self.task = task
        self.generator = get_generator(generator) if isinstance(generator, str) else generator
        self.scorer = scorer or self._default_scorer()
        self.source = source or getattr(model.config, "_name_or_path", None) or type(model).__name__
        # Training passes (scoring, recovery) switch use_cache off; the exported model keeps the user's.
        self._use_cache = getattr(model.config, "use_cache", True)
        self._check_inputs()
        self.result: PruneResult | None = None
        self._dense_traces: list[Trace] = []

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | os.PathLike,
        config: RESPConfig | str | os.PathLike | None = None,
        tokenizer=None,
        **kwargs: Any,
    ) -> RESPPruner:
        """Load the model (Hub id or local folder) and its tokenizer; `config` may be a resp_config.json path.

        `task`, `generator` and `scorer` are taken from kwargs; the rest goes to `from_pretrained`.
        """
        own = {k: kwargs.pop(k) for k in ("task", "generator", "scorer") if k in kwargs}
        if config is not None and not isinstance(config, RESPConfig):
            config = RESPConfig.from_pretrained(config)
        check_model_source(model_id_or_path)  # a missing local folder fails here, not after Hub retries
        model = AutoModelForCausalLM.from_pretrained(model_id_or_path, **kwargs)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(model_id_or_path)
        return cls(model, tokenizer, config, source=str(model_id_or_path), **own)

    # ------------------------------------------------------------------------------------------
    # Checks that run before any expensive work.
    # ------------------------------------------------------------------------------------------

    def _default_scorer(self) -> Scorer:
        c = self.config
        if c.importance == "taylor":
            return get_scorer("taylor", abs_after=c.taylor_abs_after, batch_size=c.batch_size, seed=c.seed)
        if c.importance == "magnitude":
            return get_scorer("magnitude")
        return get_scorer(c.importance, batch_size=c.batch_size)

    def _fit_max_length(self, config: RESPConfig) -> RESPConfig:
        """`config` with max_length clamped to the model's positions (a longer example cannot be scored)."""
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if not positions or config.max_length <= positions:
            return config
        logger.warning(
            "max_length=%d is above the model's %d positions (max_position_embeddings): using %d.",
            config.max_length,
            positions,
            positions,
        )
        return dataclasses.replace(config, max_length=positions)

    def _check_inputs(self) -> None:
        c, config = self.config, self.model.config
        vocab = len(self.tokenizer)
        if vocab > config.vocab_size:
            raise ValueError(
                f"The tokenizer has {vocab} tokens but the model's embedding has {config.vocab_size} rows: they "
                "do not belong together. Load the tokenizer saved with this model."
            )
        if not getattr(self.tokenizer, "chat_template", None) and c.calibration_source != "text":
            logger.warning(
                "The tokenizer has no chat template: calibration prompts fall back to a plain 'Question: ... "
                "Answer:' format, and thinking mode cannot be switched on."
            )
        widths = [s.intermediate_size for s in layer_sizes(config)]
        if "channels" in c.structures and c.channel_multiple > min(widths):
            raise ValueError(
                f"channel_multiple={c.channel_multiple} is larger than this model's narrowest MLP "
                f"({min(widths)} channels), so no channel of it could ever be removed. Use a multiple of at "
                f"most {min(widths)} (64 or 128 suit real models), or leave 'channels' out of structures."
            )
        protected = c.protected_for(config.num_hidden_layers)
        dense = sum(decoder_linear_params(config))
        needed = math.ceil(c.target_sparsity * dense)
        limit = max_removable_params(config, protected, c.structures, c.channel_multiple)
        if needed > limit:
            raise ValueError(
                f"target_sparsity={c.target_sparsity} asks to remove {needed:,} of {dense:,} decoder-linear "
                f"parameters, but with protected layers {protected}, structures {c.structures} and "
                f"channel_multiple {c.channel_multiple} at most {limit:,} ({limit / dense:.1%}) can go. Lower "
                "target_sparsity, protect fewer layers or lower channel_multiple."
            )
        if getattr(self.scorer, "bias_compensation", False):
            check_bias_compensation(config, c.export)
        if (c.filter_correct or c.selection_difficulty_samples) and self.task is None:
            raise ValueError(
                "filter_correct and difficulty selection judge answers: pass task='gsm8k' or 'mathqa'."
            )

    def _check_prompt_lengths(self, prompts: list[CalibrationPrompt]) -> None:
        """Refuse prompts that leave no trace token to score under max_length; warn when a full-length trace
        would run past the model's positions."""
        c = self.config
        if c.calibration_source == "text":
            return
        chat = [build_prompt(self.tokenizer, p.question, thinking=c.thinking) for p in prompts]
        ids = self.tokenizer(chat, add_special_tokens=adds_special_tokens(self.tokenizer, chat))["input_ids"]
        lengths = [len(i) for i in ids]
        too_long = [i for i, n in enumerate(lengths) if n >= c.max_length]
        if too_long:
            raise ValueError(
                f"Calibration prompts {too_long[:10]} are {max(lengths[i] for i in too_long)} tokens or more with "
                f"the chat template, but max_length={c.max_length} (prompt + trace tokens scored): no token of "
                "their traces could be scored. Raise max_length, or shorten or drop those prompts."
            )
        positions = getattr(self.model.config, "max_position_embeddings", None)
        # (max_length is already clamped to the positions, so a prompt filling them is refused above.)
        if positions and c.calibration_source == "self":
            if max(lengths) + c.max_new_tokens > positions:
                logger.warning(
                    "The longest calibration prompt (%d tokens) plus max_new_tokens=%d exceeds the model's %d "
                    "positions: a trace that long runs past what the model was trained on.",
                    max(lengths),
                    c.max_new_tokens,
                    positions,
                )

    # ------------------------------------------------------------------------------------------
    # The algorithm.
    # ------------------------------------------------------------------------------------------

    def prune(self, prompts, output_dir: str | os.PathLike | None = None) -> PruneResult:
        """Run RESP on the calibration prompts; with `output_dir`, checkpoint every stage and resume."""
        prompts = as_prompts(prompts)[: self.config.num_calibration_prompts]
        self._check_prompt_lengths(prompts)  # before any generation, and before a run folder is written
        if output_dir is None:
            return self._prune(prompts, None)
        out = Path(output_dir)
        with _run_lock(out):  # a second prune into the same folder is refused while this one runs
            return self._prune(prompts, out)

    def _prune(self, prompts: list[CalibrationPrompt], out: Path | None) -> PruneResult:
        c = self.config
        dense_config = self.model.config
        dense_params = sum(decoder_linear_params(dense_config))
        dense_total = self.model.num_parameters()
        protected = c.protected_for(dense_config.num_hidden_layers)
        state = self._open_run(out) if out is not None else None
        if state is None:
            if c.selection_difficulty_samples:
                questions = {p.question for p in prompts}
                prompts, _ = select_by_difficulty(
                    self.model, self.tokenizer, prompts, c, self.generator, self.task
                )
                if out is not None:  # a resumed run regenerates for the same selected prompts
                    _write_json(out / SELECTED_FILE, [p.question for p in prompts])
                logger.info("SSGR selection kept %d of %d prompts", len(prompts), len(questions))
            plan, history, regenerated = PruningPlan.full(dense_config), [], set()
            model = self.model
            traces = self._calibrate(model, prompts, stage=0)
            if out is not None:
                save_traces(traces, out / DENSE_TRACES)
        else:
            if (out / SELECTED_FILE).exists():
                selected = set(json.loads((out / SELECTED_FILE).read_text()))
                prompts = [p for p in prompts if p.question in selected]
            plan, history, traces = state["plan"], state["history"], state["traces"]
            regenerated = set(state["regenerated"])
            model = _restore_biases(prune_model(self.model, plan, export="per_layer"), state["biases"])
            logger.info("Resuming after stage %d of %d", len(history), c.num_stages)

        for k, target in enumerate(c.stage_sparsities()):
            if k < len(history):
                continue
            start = time.perf_counter()
            sparsity_now = 1 - sum(decoder_linear_params(model.config)) / dense_params
            due = [m for m in c.regeneration_milestones if m <= sparsity_now + 1e-9 and m not in regenerated]
            if due and c.calibration_source == "self":
                logger.info(
                    "Stage %d: sparsity %.3f crossed milestone(s) %s: regenerating traces",
                    k + 1,
                    sparsity_now,
                    due,
                )
                traces = self._regenerate(model, prompts, traces, stage=k)
                regenerated.update(due)
            examples = build_examples(
                self.tokenizer,
                [t.prompt for t in traces],
                [t.completion for t in traces],
                c.loss,
                c.max_length,
            )
            scores = self.scorer.score(model, examples)
            removed = dense_params - sum(decoder_linear_params(model.config))
            step = allocate(
                model.config,
                scores,
                params_to_remove=max(0, math.ceil(target * dense_params) - removed),
                allocation=c.allocation,
                protected=protected,
                structures=c.structures,
                normalization=c.normalization,
                dense_intermediate_size=layer_sizes(dense_config)[0].intermediate_size,
                channel_multiple=c.channel_multiple,
            )
            pruned = prune_model(model, step, export="per_layer")
            if getattr(self.scorer, "bias_compensation", False):  # FLAP: keep each layer's expected output
                pruned = self.scorer.compensate(model, pruned, step)
            model = pruned
            plan = compose_plans(plan, step)
            stats = self.scorer.last_stats
            record = {
                "stage": k + 1,
                "target_sparsity": target,
                "sparsity": 1 - sum(decoder_linear_params(model.config)) / dense_params,
                "regenerated": bool(due) and c.calibration_source == "self",
                "num_traces": len(traces),
                "mean_trace_tokens": sum(t.num_tokens for t in traces) / len(traces),
                "truncated_fraction": sum(t.truncated for t in traces) / len(traces),
                "calibration_loss": stats.mean_loss if stats else None,
                "seconds": time.perf_counter() - start,
            }
            history.append(record)
            logger.info(
                "Stage %d/%d: sparsity %.3f (target %.3f), calibration loss %s, %.1fs",
                k + 1,
                c.num_stages,
                record["sparsity"],
                target,
                "n/a" if record["calibration_loss"] is None else f"{record['calibration_loss']:.4f}",
                record["seconds"],
            )
            if out is not None:
                self._checkpoint(out, k + 1, model, plan, traces, scores, history, sorted(regenerated))

        recovery = None
        if c.recovery == "lora":  # self-distillation on the dense model's traces, merged into the weights
            dense_traces = load_traces(out / DENSE_TRACES) if out is not None else self._dense_traces
            rec = recover_with_lora(
                model,
                self.tokenizer,
                dense_traces,
                r=c.lora_r,
                alpha=c.lora_alpha,
                dropout=c.lora_dropout,
                epochs=c.recovery_epochs,
                learning_rate=c.recovery_learning_rate,
                batch_size=c.batch_size,
                max_length=c.max_length,
                seed=c.seed,
            )
            model = rec.model
            recovery = {
                "method": "lora",
                "train_loss": rec.train_loss,
                "seconds": rec.seconds,
                "trainable_parameters": rec.trainable_parameters,
            }
        final = (
            prune_model(model, PruningPlan.full(model.config), export=c.export)
            if c.export == "uniform"
            else model
        )
        final.config._name_or_path = self.source
        final.config.use_cache = self._use_cache
        report = size_report(dense_config, final).to_dict()
        report.update(
            dense_total_params=dense_total,
            pruned_total_params=final.num_parameters(),
            sparsity_definition=SPARSITY_DEFINITION,
            stages=history,
            source=self.source,
            resp_config=c.to_dict(),
            recovery=recovery,
        )
        self.result = PruneResult(final, plan, report, history)
        return self.result

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

    def _calibrate(self, model, prompts: list[CalibrationPrompt], stage: int) -> list[Trace]:
        """Traces for the prompts from the current model; each stage draws from its own seed."""
        traces = build_traces(
            model,
            self.tokenizer,
            prompts,
            self.config,
            self.generator,
            self.task,
            seed=self.config.seed + 7919 * stage,
        )
        if stage == 0:
            self._dense_traces = traces  # LoRA recovery distils the dense model's own traces
        return traces

    # ------------------------------------------------------------------------------------------
    # Checkpoints: one folder per finished stage, written to a temp name and renamed into place.
    # ------------------------------------------------------------------------------------------

    def _open_run(self, out: Path) -> dict | None:
        """Start a run in `out`, or return the state after its last finished stage to resume from."""
        if not (out / RUN_FILE).exists():
            if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
                raise ValueError(f"{out} is not empty and holds no RESP run; choose an empty or new folder.")
            out.mkdir(parents=True, exist_ok=True)
            self.config.save_pretrained(out)
            _write_json(out / RUN_FILE, {"source": self.source, "status": "running"})
            return None
        saved = RESPConfig.from_pretrained(out)
        if saved != self.config:
            diff = {
                k: (v, getattr(self.config, k))
                for k, v in saved.to_dict().items()
                if v != getattr(self.config, k)
            }
            raise ValueError(
                f"{out} holds a RESP run with a different config (saved vs now: {diff}); use another output "
                "folder, or the saved config to resume it."
            )
        stages = sorted((out / STAGES_DIR).glob("stage_*")) if (out / STAGES_DIR).exists() else []
        if not stages:
            return None
        last = stages[-1]
        record = json.loads((last / "record.json").read_text())
        torch.set_rng_state(torch.load(last / "rng.pt", weights_only=True))
        return {
            "plan": PruningPlan.from_dict(json.loads((last / "plan.json").read_text())),
            "history": record["history"],
            "regenerated": record["regenerated"],
            "traces": load_traces(last / "traces.jsonl"),
            "biases": load_file(last / BIASES_FILE) if (last / BIASES_FILE).exists() else {},
        }

    def _checkpoint(self, out, stage, model, plan, traces, scores, history, regenerated) -> None:
        stages = out / STAGES_DIR
        stages.mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=stages, prefix=f".stage_{stage:03d}."))
        _write_json(tmp / "plan.json", plan.to_dict())
        save_traces(traces, tmp / "traces.jsonl")
        save_scores(scores, tmp / "scores.json", stage=stage, importance=self.config.importance)
        torch.save(torch.get_rng_state(), tmp / "rng.pt")
        dense_names = set(self.model.state_dict())
        added = {
            n: t.detach().contiguous().cpu() for n, t in model.state_dict().items() if n not in dense_names
        }
        if added:  # biases a criterion added (FLAP's compensation): the plan alone cannot rebuild them
            save_file(added, tmp / BIASES_FILE)
        _write_json(tmp / "record.json", {"history": history, "regenerated": regenerated})
        final = stages / f"stage_{stage:03d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)

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
    ) -> Path:
        """Write the pruned model, tokenizer, resp_config.json, the report (resp_report.json) and a model card.

        `eval_results` are `evaluate_model(...).summary` dicts (shown in the card and its model-index);
        `command` is the command that reproduces the model; `base_model` the Hub id when the model was
        loaded from a local folder.
        """
        from .hub import write_model_card

        if self.result is None:
            raise ValueError("Nothing to save yet: call prune() first.")
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.result.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        self.config.save_pretrained(directory)
        _write_json(directory / REPORT_FILE, self.result.report)
        write_model_card(
            directory,
            report=self.result.report,
            base_model=base_model or self.source,
            eval_results=eval_results,
            license=license,
            command=command,
            model_id=model_id,
        )
        if (directory / RUN_FILE).exists():
            _write_json(directory / RUN_FILE, {"source": self.source, "status": "finished"})
        return directory

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
        from .hub import check_can_push, push_to_hub

        token = check_can_push(repo_id, token)  # offline or no token: refused before anything is written
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


def _restore_biases(model: PreTrainedModel, biases: dict[str, torch.Tensor]) -> PreTrainedModel:
    """Put back biases a criterion added to linears that had none (and the config flags that build them)."""
    for name, tensor in biases.items():
        module_name = name.removesuffix(".bias")
        linear = model.get_submodule(module_name)
        linear.bias = torch.nn.Parameter(tensor.to(linear.weight.device, linear.weight.dtype))
        flag = {"o_proj": O_PROJ_BIAS, "down_proj": DOWN_PROJ_BIAS}.get(module_name.rsplit(".", 1)[-1])
        if flag is None:
            raise ValueError(f"Cannot restore an added bias on {module_name}: no config flag builds it.")
        setattr(model.config, flag, True)
    return model


@contextlib.contextmanager
def _run_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on `out` (a `.resp.lock` file, released by the OS if the process dies)."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): no lock
        yield
        return
    lock = out / LOCK_FILE
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise ValueError(
                f"{out} is in use by another prune ({owner}). Wait for it to finish (running the same "
                "command again then resumes), or choose another output folder."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_json(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
