"""Model cards of RESP-pruned checkpoints.

`render_model_card` turns a prune report (`resp_report.json`) and optional evaluation summaries into a
`huggingface_hub.ModelCard`: Hub metadata (base model, license, tags, `model-index` results) plus a body
with the recipe, per-layer sizes, parameter counts, stage history, evaluation and loading instructions.
`write_model_card` saves it as README.md (uploading the folder is `hub.push_to_hub`'s job).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .accounting import SPARSITY_DEFINITION
from .configuration_resp import RESPConfig
from .files import atomic_write
from .hub import hub_model_id, offline_mode
from .report import PruneReport
from .run_folder import RunFolder

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_CARD_TEMPLATE",
    "base_model_license",
    "build_eval_results",
    "export_mode",
    "render_model_card",
    "write_model_card",
]

# The template lives in model_cards/ (the repository layout) and ships in the package through this symlink.
MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "templates" / "resp_model_card_template.md"
BASE_TAGS = ("pruned", "structured-pruning", "resp", "reasoning")
RESP_PAPER = "https://arxiv.org/abs/2512.02185"


def export_mode(report: PruneReport | Mapping[str, Any]) -> str:
    """`uniform` or `per_layer`: from resp_config.export.mode, else from whether the pruned layers differ."""
    return PruneReport.coerce(report).export


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{x:,}"


def _default_model_name(base_model: str, report: PruneReport) -> str:
    base = Path(base_model.rstrip("/")).name or "model"
    return f"{base}-RESP-{round(100 * report.sparsity)}"


def build_eval_results(eval_results: Sequence[dict[str, Any]] | None) -> list[EvalResult]:
    """`huggingface_hub.EvalResult` entries (model-index) from `evaluate_model(...).summary` dicts."""
    from .evaluation.tasks import get_task

    entries = []
    for summary in eval_results or []:
        config = summary.get("config") or {}
        task = summary["task"]
        try:
            spec = get_task(task)
        except Exception:  # an unregistered task: keep its name, the Hub only needs strings
            spec = None
        data = config.get("data")
        hub_data = data is None and spec is not None
        dataset_type = str(data) if data is not None else (spec.hub_id if spec is not None else task)
        entries.append(
            EvalResult(
                task_type="text-generation",
                task_name="Text Generation",
                dataset_type=dataset_type,
                dataset_name=_dataset_label(task, dataset_type, hub_data),
                dataset_config=spec.hub_config if hub_data else None,
                dataset_split=config.get("split"),
                metric_type="accuracy",
                metric_name=f"accuracy ({_settings(summary)})",
                metric_value=round(float(summary["accuracy"]), 4),
            )
        )
    return entries


def _dataset_label(task: str, dataset_type: str, hub_data: bool) -> str:
    pretty = {"gsm8k": "GSM8K", "mathqa": "MathQA"}.get(task, task)
    return pretty if hub_data else f"{pretty} ({dataset_type})"


def _settings(summary: dict[str, Any]) -> str:
    """The decoding settings of one evaluation in a few words."""
    c = summary.get("config") or {}
    parts = [f"{c.get('num_fewshot', 0)}-shot"]
    c = {**c, **(c.get("generation") or {})}  # the decoding settings (flat in summaries written before)
    if "do_sample" in c:
        parts.append(f"sampled T={c.get('temperature')}" if c["do_sample"] else "greedy")
    if "thinking" in c:
        parts.append("thinking" if c["thinking"] else "no thinking")
    if c.get("max_new_tokens") is not None:
        parts.append(f"max {c['max_new_tokens']} new tokens")
    return ", ".join(parts)


def _layer_rows(report: PruneReport) -> list[dict[str, str]]:
    size = report.size
    rows = []
    for i, (d, p) in enumerate(zip(size.dense_layers, size.pruned_layers)):
        rows.append(
            {
                "layer": str(i),
                "heads": f"{d.num_attention_heads} → {p.num_attention_heads}",
                "kv_heads": f"{d.num_key_value_heads} → {p.num_key_value_heads}",
                "channels": f"{d.intermediate_size} → {p.intermediate_size}",
                "params": f"{_num(size.dense_layer_params[i])} → {_num(size.pruned_layer_params[i])}",
                "sparsity": _pct(size.layer_sparsity(i)),
            }
        )
    return rows


def _stage_rows(report: PruneReport) -> list[dict[str, str]]:
    return [
        {
            "stage": str(s.stage),
            "target": _pct(s.target_sparsity),
            "sparsity": _pct(s.sparsity, 2),
            "regenerated": "yes" if s.regenerated else "no",
            "traces": _num(s.num_traces),
            "tokens": f"{s.mean_trace_tokens:.1f}",
            "truncated": _pct(s.truncated_fraction),
            "loss": "n/a" if s.calibration_loss is None else f"{s.calibration_loss:.4f}",
            "seconds": f"{s.seconds:.1f}",
        }
        for s in report.stages
    ]


def _eval_rows(eval_results: Sequence[dict[str, Any]], entries: list[EvalResult]) -> list[dict[str, str]]:
    rows = []
    for summary, entry in zip(eval_results, entries):
        tokens = summary.get("mean_generated_tokens")
        rows.append(
            {
                "task": entry.dataset_name,
                "split": entry.dataset_split or "n/a",
                "n": _num(summary.get("n")),
                "accuracy": _pct(summary["accuracy"]),
                "ci": f"{_pct(summary.get('ci_low'))} – {_pct(summary.get('ci_high'))}",
                "tokens": "n/a" if tokens is None else f"{tokens:.1f}",
                "truncated": _pct(summary.get("truncated_fraction")),
                "settings": _settings(summary),
            }
        )
    return rows


_CALIBRATION_DATA = {
    "self": "the model's own reasoning traces",
    "gold": "human-written solutions",
    "text": "plain text",
}


def _recipe(config: RESPConfig | None) -> str | None:
    """One line on how this model was pruned, naming any departure from RESP's defaults that matters."""
    if config is None:
        return None
    if config.importance != "taylor":
        scores = f"`{config.importance}` importance"
    elif config.loss == "decode":
        scores = "decode-token Taylor importance (RESP)"
    else:
        scores = "full-sequence Taylor importance"
    parts = [
        f"{config.num_stages} stage(s) to target sparsity {config.target_sparsity}",
        f"{config.export.allocation} allocation",
        scores,
        f"{_CALIBRATION_DATA[config.calibration.source]} as calibration data",
    ]
    if config.calibration.source == "self":
        g = config.calibration.generation
        decoding = f"sampled at T={g.temperature}" if g.do_sample else "greedy"
        parts.append(
            f"traces {decoding} up to {g.max_new_tokens} new tokens, thinking {'on' if g.thinking else 'off'}"
        )
    if config.recovery is not None:
        parts.append(f"then {config.recovery.describe()}")
    return ", ".join(parts)


def _fence(text: str) -> str:
    """A code fence longer than any backtick run inside `text`."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def render_model_card(
    report: PruneReport | Mapping[str, Any],
    base_model: str,
    eval_results: list[dict[str, Any]] | None = None,
    license: str | None = None,
    command: str | None = None,
    model_id: str | None = None,
    template_path: str | os.PathLike | None = None,
) -> ModelCard:
    """The model card of a RESP-pruned model: Hub metadata plus recipe, sizes, stages, evaluation, usage.

    `report` is the prune's `PruneReport` (or its JSON form, a loaded resp_report.json).
    """
    report = PruneReport.coerce(report)
    template = Path(template_path) if template_path is not None else MODEL_CARD_TEMPLATE
    if not template.is_file():
        raise FileNotFoundError(
            f"Model card template {template} not found; pass template_path= or reinstall optimum-resp from "
            "its source tree."
        )
    eval_results = list(eval_results or [])
    entries = build_eval_results(eval_results)
    model_name = model_id or _default_model_name(base_model, report)
    hub_base = hub_model_id(base_model)
    if hub_base is None:
        logger.warning(
            "base_model %r is not a Hub model id: the base_model metadata is left out. Pass the Hub id "
            "(e.g. 'Qwen/Qwen3-8B') to link the base model.",
            base_model,
        )
    model_type = report.model_type
    tags = [*BASE_TAGS, model_type]
    card_data = ModelCardData(
        base_model=hub_base,
        license=license or "other",
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=tags,
        model_name=model_name if entries else None,  # model-index's name; no stray key without results
        eval_results=entries or None,
    )
    mode = report.export
    size = report.size
    has_totals = size.dense_total_params is not None and size.pruned_total_params is not None
    runtimes = report.runtime_support()
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_id=model_name,
        repo_id=model_id or "path/to/this/model",
        base_model_name=base_model,
        base_model_link=f"https://huggingface.co/{hub_base}" if hub_base else None,
        license_known=license is not None,
        paper_url=RESP_PAPER,
        sparsity=_pct(report.sparsity, 2),
        sparsity_definition=SPARSITY_DEFINITION,
        architecture=model_type,
        num_layers=len(size.pruned_layers),
        resp_config_json=json.dumps(report.resp_config.to_dict(), indent=2) if report.resp_config else None,
        recipe=_recipe(report.resp_config),
        layer_rows=_layer_rows(report),
        dense_linear=_num(size.dense_decoder_linear_params),
        pruned_linear=_num(size.pruned_decoder_linear_params),
        dense_total=_num(size.dense_total_params) if has_totals else None,
        pruned_total=_num(size.pruned_total_params) if has_totals else None,
        stage_rows=_stage_rows(report),
        eval_rows=_eval_rows(eval_results, entries),
        export=mode,
        vllm_support=next(r for r in runtimes if r.runtime == "vllm"),
        runtime_rows=runtimes,
        command=command,
        command_fence=_fence(command or ""),
    )


def write_model_card(
    directory: str | os.PathLike,
    report: PruneReport | Mapping[str, Any] | None = None,
    base_model: str | None = None,
    eval_results: list[dict[str, Any]] | None = None,
    license: str | None = None,
    command: str | None = None,
    model_id: str | None = None,
) -> Path:
    """Render the card and save it as `directory`/README.md atomically (temp file, then os.replace).

    `report` defaults to the folder's resp_report.json, `base_model` to the report's `source`, and
    `license` to the base model's own (`base_model_license`), "other" when that is unknown.
    """
    directory = Path(directory)
    if report is None:
        report = RunFolder(directory).load_report()
        if report is None:
            raise FileNotFoundError(
                f"No {RunFolder.REPORT} in {directory}: pass report= or save the pruner first."
            )
    report = PruneReport.coerce(report)
    base_model = base_model or report.source
    if not base_model:
        raise ValueError("The report names no source model: pass base_model='org/name'.")
    if license is None:
        license = base_model_license(base_model)
    card = render_model_card(report, base_model, eval_results, license, command, model_id)
    atomic_write(directory / "README.md", str(card))
    logger.info("Wrote model card %s", directory / "README.md")
    return directory / "README.md"


def base_model_license(
    base_model: str, token: str | None = None, endpoint: str | None = None, timeout: float = 10.0
) -> str | None:
    """The base model's license id from its README metadata (local folder) or Hub info; None when unknown."""
    local = Path(base_model).expanduser()
    if local.is_dir():
        readme = local / "README.md"
        if not readme.is_file():
            return None
        try:
            return ModelCard.load(readme, ignore_metadata_errors=True).data.license
        except Exception as err:  # a malformed card: treat the license as unknown
            logger.warning("Could not read the license from %s: %s", readme, err)
            return None
    if offline_mode() or hub_model_id(base_model) is None:
        return None
    try:
        info = HfApi(endpoint=endpoint).model_info(base_model, token=token, timeout=timeout)
    except Exception as err:  # offline, gated, missing: the card then says "other" and asks to check
        logger.info("Could not look up %s's license on the Hub: %s", base_model, err)
        return None
    if info.card_data is not None and info.card_data.license:
        return info.card_data.license
    return next((t.split(":", 1)[1] for t in info.tags or [] if t.startswith("license:")), None)
