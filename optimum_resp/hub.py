"""Model cards and Hub upload for RESP-pruned checkpoints.

`render_model_card` turns a prune report (`resp_report.json`) and optional evaluation summaries into a
`huggingface_hub.ModelCard`: Hub metadata (base model, license, tags, `model-index` results) plus a body
with the recipe, per-layer sizes, parameter counts, stage history, evaluation and loading instructions.
`write_model_card` saves it as README.md; `push_to_hub` uploads a saved folder after checking, without
touching the network, that the folder is complete and that a push can work at all.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, constants, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import (
    HFValidationError,
    build_hf_headers,
    get_session,
    hf_raise_for_status,
    validate_repo_id,
)

from .accounting import SPARSITY_DEFINITION
from .configuration_resp import RESPConfig
from .files import atomic_write
from .report import PruneReport
from .run_folder import RunFolder

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_IGNORE_PATTERNS",
    "HubPushError",
    "MODEL_CARD_TEMPLATE",
    "base_model_license",
    "build_eval_results",
    "check_can_push",
    "check_folder",
    "check_hub_reachable",
    "offline_mode",
    "export_mode",
    "push_to_hub",
    "render_model_card",
    "write_model_card",
]

# The template lives in model_cards/ (the repository layout) and ships in the package through this symlink.
MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "templates" / "resp_model_card_template.md"
BASE_TAGS = ("pruned", "structured-pruning", "resp", "reasoning")
RESP_PAPER = "https://arxiv.org/abs/2512.02185"
# Resume-only checkpoints and interrupted atomic writes of a RESP run: never part of the published model.
DEFAULT_IGNORE_PATTERNS = RunFolder.WORK_FILES
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_TRUE = {"1", "ON", "YES", "TRUE"}


class HubPushError(RuntimeError):
    """A push that could not start or did not finish; the message says what to do."""


# ----------------------------------------------------------------------------------------------
# Model card.
# ----------------------------------------------------------------------------------------------


def export_mode(report: PruneReport | Mapping[str, Any]) -> str:
    """`uniform` or `per_layer`: from resp_config.export.mode, else from whether the pruned layers differ."""
    return PruneReport.coerce(report).export


def _hub_model_id(name: str | None) -> str | None:
    """`name` if it can be a Hub model id (not a local folder), else None: the Hub rejects paths."""
    if not name or Path(name).expanduser().exists() or not _HUB_ID.match(name):
        return None
    return name


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
    hub_base = _hub_model_id(base_model)
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


def offline_mode() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, read now (not at import)."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.upper() in _TRUE or constants.is_offline_mode()


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
    if offline_mode() or _hub_model_id(base_model) is None:
        return None
    try:
        info = HfApi(endpoint=endpoint).model_info(base_model, token=token, timeout=timeout)
    except Exception as err:  # offline, gated, missing: the card then says "other" and asks to check
        logger.info("Could not look up %s's license on the Hub: %s", base_model, err)
        return None
    if info.card_data is not None and info.card_data.license:
        return info.card_data.license
    return next((t.split(":", 1)[1] for t in info.tags or [] if t.startswith("license:")), None)


# ----------------------------------------------------------------------------------------------
# Upload.
# ----------------------------------------------------------------------------------------------

# Network trouble: Hub error answers, the HTTP client's own errors (HfHubHTTPError derives from the
# client's base error class, httpx or httpx2 depending on the huggingface_hub version), refused or timed
# out connections. Local file errors (a file deleted mid-push) are not network failures and pass through.
_NETWORK_ERRORS = (
    *(c for c in HfHubHTTPError.__mro__[1:] if c not in (OSError, Exception, BaseException, object)),
    HfHubHTTPError,
    ConnectionError,
    TimeoutError,
)


def check_folder(folder: str | os.PathLike) -> Path:
    """Refuse a folder that cannot be a complete model repository: no config, weights or README.md."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise HubPushError(f"{path} does not exist or is not a folder: save the pruned model there first.")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any(p.is_file() for pattern in WEIGHT_PATTERNS for p in path.glob(pattern)):
        missing.append("weights (*.safetensors or pytorch_model*.bin)")
    if not (path / "README.md").is_file():
        missing.append("README.md (write it with optimum_resp.hub.write_model_card)")
    if missing:
        raise HubPushError(f"{path} is not a complete model folder; missing: {', '.join(missing)}.")
    for index in path.glob("*.index.json"):
        shards = set((json.loads(index.read_text()).get("weight_map") or {}).values())
        absent = sorted(s for s in shards if not (path / s).is_file())
        if absent:
            raise HubPushError(f"{index} lists weight shards that are not in {path}: {absent}.")
    try:
        ModelCard.load(path / "README.md")
    except Exception as err:
        raise HubPushError(f"{path / 'README.md'} has invalid metadata: {err}") from err
    return path


def check_repo_id(repo_id: str) -> None:
    """Refuse a string that cannot name a Hub repo, before any work (ValueError: bad input)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(
            f"{repo_id!r} is not a valid Hub repo id ({err}). Use 'name' or 'user/name'."
        ) from err


def check_can_push(repo_id: str, token: str | None = None, what: str = "the model") -> str:
    """Refuse to push an invalid repo id, or while offline or without a token, before any work; returns
    the token to use."""
    check_repo_id(repo_id)
    if offline_mode():
        raise HubPushError(
            f"HF_HUB_OFFLINE is set, so {what} cannot be pushed to {repo_id}. Unset HF_HUB_OFFLINE (and "
            "TRANSFORMERS_OFFLINE) on a machine with network access and push again."
        )
    token = token or get_token()
    if token is None:
        raise HubPushError(
            f"No Hugging Face token, so {what} cannot be pushed to {repo_id}. Log in with `hf auth login`, "
            "set the HF_TOKEN environment variable, or pass token=... (a token with write access)."
        )
    return token


def check_hub_reachable(token: str, endpoint: str | None = None, timeout: float = 10.0) -> None:
    """Ask the Hub who `token` belongs to (one request, `timeout` seconds, no retries): refuse a push before any
    work when the Hub cannot be reached or refuses the token, instead of after the whole prune."""
    url = f"{endpoint or constants.ENDPOINT}/api/whoami-v2"
    try:
        hf_raise_for_status(get_session().get(url, headers=build_hf_headers(token=token), timeout=timeout))
    except _NETWORK_ERRORS as err:
        raise HubPushError(
            f"Cannot push: the Hugging Face Hub at {endpoint or constants.ENDPOINT} cannot be reached or refuses "
            f"the token ({type(err).__name__}: {err}). Check the network (HF_ENDPOINT, proxies) and the token (`hf "
            "auth whoami`); nothing was written or sent."
        ) from None


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    revision: str | None = None,
    endpoint: str | None = None,
    ignore_patterns: Sequence[str] = DEFAULT_IGNORE_PATTERNS,
) -> str:
    """Upload a saved model folder to `repo_id` (created if needed); returns the commit URL.

    Every refusal (incomplete folder, offline, no token) happens before any network call, and the
    local folder is only read.
    """
    path = check_folder(folder)
    if create_pr and revision not in (None, constants.DEFAULT_REVISION):
        raise HubPushError(
            f"create_pr=True opens a pull request against the default branch; drop revision={revision!r}."
        )
    token = check_can_push(repo_id, token, what=str(path))
    api = HfApi(endpoint=endpoint, token=token)
    message = commit_message or f"Upload RESP-pruned model from {path.name}"
    try:
        url = api.create_repo(repo_id, private=private, token=token, exist_ok=True)
        if revision is not None and not revision.startswith("refs/pr/"):
            api.create_branch(url.repo_id, branch=revision, token=token, exist_ok=True)
        info = api.upload_folder(
            folder_path=path,
            repo_id=url.repo_id,
            commit_message=message,
            create_pr=create_pr,
            revision=revision,
            token=token,
            ignore_patterns=list(ignore_patterns),
        )
    except _NETWORK_ERRORS as err:
        raise HubPushError(
            f"Pushing {path} to {repo_id} failed: {type(err).__name__}: {err}. The local folder is complete "
            "and unchanged; run the push again (files already uploaded are not sent twice)."
        ) from err
    if info.pr_url:
        logger.info("Opened pull request %s", info.pr_url)
    logger.info("Pushed %s to %s: %s", path, repo_id, info.commit_url)
    return info.commit_url
