"""Hub upload of RESP-pruned checkpoints.

`push_to_hub` uploads a saved folder after checking, without touching the network, that the folder is complete
and that a push can work at all (`check_can_push`, and `check_hub_reachable` with one request); the card it
carries is written by `model_card`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, constants, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import (
    HFValidationError,
    build_hf_headers,
    get_session,
    hf_raise_for_status,
    validate_repo_id,
)

from .run_folder import RunFolder

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_IGNORE_PATTERNS",
    "HubPushError",
    "check_can_push",
    "check_folder",
    "check_hub_reachable",
    "check_repo_id",
    "hub_model_id",
    "offline_mode",
    "push_to_hub",
]

# Resume-only checkpoints and interrupted atomic writes of a RESP run: never part of the published model.
DEFAULT_IGNORE_PATTERNS = RunFolder.WORK_FILES
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_TRUE = {"1", "ON", "YES", "TRUE"}


class HubPushError(RuntimeError):
    """A push that could not start or did not finish; the message says what to do."""


def offline_mode() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, read now (not at import)."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.upper() in _TRUE or constants.is_offline_mode()


def hub_model_id(name: str | None) -> str | None:
    """`name` if it can be a Hub model id (not a local folder), else None: the Hub rejects paths."""
    if not name or Path(name).expanduser().exists() or not _HUB_ID.match(name):
        return None
    return name


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
        missing.append("README.md (write it with optimum_resp.model_card.write_model_card)")
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
