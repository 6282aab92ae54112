"""Where a model comes from: a Hub id or a local folder, checked before any work and loaded with errors
that name the file at fault (a bad input exits 2 on the command line, never 1 with a library trace)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = ["ModelLoadError", "check_device", "check_model_source", "load_model", "load_tokenizer"]


class ModelLoadError(ValueError):
    """A local model folder that cannot be loaded (the message names the file and what is wrong with it)."""


def check_model_source(name_or_path: str | os.PathLike) -> None:
    """Refuse at once a model path that looks local but does not exist (it would otherwise be sent to the
    Hub, retried for a minute, and fail there with an unrelated message)."""
    text = os.fspath(name_or_path)
    if Path(text).expanduser().exists():
        return
    looks_local = (
        isinstance(name_or_path, os.PathLike)
        or text.startswith(("/", "./", "../", "~", "."))
        or text.count("/") > 1
        or text.endswith(("/", os.sep))
        or (os.sep != "/" and os.sep in text)
    )
    if looks_local:
        raise FileNotFoundError(
            f"Model folder {text} does not exist. Check the path, or pass a Hub id such as 'Qwen/Qwen3-8B'."
        )


def _check_local_files(folder: Path) -> None:
    """Read what a load reads first, so a damaged file is named: config.json as JSON, each safetensors header."""
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is a file; pass the model's folder (the one holding config.json).")
    config = folder / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"{folder} has no config.json: it is not a saved transformers model folder.")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ModelLoadError(
            f"{config} is not UTF-8 text: the file is damaged; save the model again."
        ) from None
    except json.JSONDecodeError as err:
        raise ModelLoadError(
            f"{config} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}): the file is damaged "
            "or was edited by hand; fix it or save the model again."
        ) from None
    from safetensors import safe_open

    for weights in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except Exception as err:  # SafetensorError (not exported as a class), OSError
            raise ModelLoadError(
                f"{weights} cannot be read ({err}): the file is truncated or damaged; copy or save it again."
            ) from None


def _load(what: str, loader: Any, source: str | os.PathLike, **kwargs: Any) -> Any:
    check_model_source(source)
    folder = Path(os.fspath(source)).expanduser()
    local = folder.exists()
    if local and what == "model":
        _check_local_files(folder)
    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        if not local:  # Hub errors (network, gated repo, missing file) already say what to do
            raise
        raise ModelLoadError(f"Could not load the {what} from {folder}: {type(err).__name__}: {err}") from err


def load_model(source: str | os.PathLike, **kwargs: Any) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained(source, **kwargs)`, with a missing or damaged local folder refused
    before or as it loads, naming the file (a `ModelLoadError`, or FileNotFoundError for a missing folder)."""
    return _load("model", AutoModelForCausalLM, source, **kwargs)


def load_tokenizer(source: str | os.PathLike, **kwargs: Any) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained(source, **kwargs)`, with a damaged local tokenizer named as such."""
    return _load("tokenizer", AutoTokenizer, source, **kwargs)


def check_device(device: str | torch.device | None) -> torch.device:
    """The torch device `device` names (None: cuda if available, else cpu); a clear error for one this machine
    lacks (CUDA on a CPU-only build or machine, an index past the GPUs present, an unknown name)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"Unknown device {device!r} ({err}); use cpu, cuda, cuda:N or mps.") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = (
                "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            )
            raise ValueError(
                f"Device {device!r} asks for a CUDA GPU, but none is available (torch {torch.__version__} is "
                f"{build}). Use --device cpu, or run on a machine with a GPU."
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"Device {device!r} does not exist: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}."
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"Device {device!r} (Apple MPS) is not available here; use --device cpu.")
    return resolved
