"""Where a model comes from: a Hub id or a local folder, checked before any work and loaded with errors
that name the file at fault (a bad input exits 2 on the command line, never 1 with a library trace).

A local folder is checked before its weights load: config.json as JSON, its per-layer sizes against themselves
(`check_model_config`), and the tensors its config describes against the names and shapes in the safetensors
headers (`check_model_folder`). Every load then refuses what transformers reports as missing, unexpected or
mismatched (it would fill a missing tensor with random values and go on).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ModelLoadError",
    "check_device",
    "check_dtype",
    "cpu_has_bf16_matmuls",
    "cpu_load_dtype",
    "check_model_config",
    "check_model_folder",
    "check_model_source",
    "looks_local",
    "load_model",
    "load_model_config",
    "load_tokenizer",
]

SHOWN = 5
"""Tensors named in a refusal (then a count of the rest)."""


class ModelLoadError(ValueError):
    """A local model folder that cannot be loaded (the message names the file and what is wrong with it)."""


def looks_local(name_or_path: str | os.PathLike) -> bool:
    """Whether a name can only mean a local path, never a Hub id (`org/name`)."""
    text = os.fspath(name_or_path)
    return (
        isinstance(name_or_path, os.PathLike)
        or text.startswith(("/", "./", "../", "~", "."))
        or text.count("/") > 1
        or text.endswith(("/", os.sep))
        or (os.sep != "/" and os.sep in text)
    )


def check_model_source(
    name_or_path: str | os.PathLike, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> None:
    """Refuse at once a model path that looks local but does not exist (it would otherwise be sent to the
    Hub, retried for a minute, and fail there with an unrelated message), and, while HF_HUB_OFFLINE is set, a
    Hub id the local Hub cache holds no config.json of (nothing could load it)."""
    text = os.fspath(name_or_path)
    if Path(text).expanduser().exists():
        return
    if looks_local(name_or_path):
        raise FileNotFoundError(
            f"Model folder {text} does not exist. Check the path, or pass a Hub id such as 'Qwen/Qwen3-8B'."
        )
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError

    from .hub import offline_mode

    if not offline_mode():
        return
    try:
        cached = try_to_load_from_cache(text, "config.json", cache_dir=cache_dir, revision=revision)
    except HFValidationError:  # not a repo id either: transformers' own error names it
        return
    if not isinstance(cached, str):
        raise FileNotFoundError(
            f"{text} is not a local folder, and HF_HUB_OFFLINE is set while the Hub cache holds no copy of it. "
            f"Download it where there is network (`hf download {text}`), or pass the path of a local model folder."
        )


def check_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype | None:
    """`dtype` if transformers can load weights in it ("auto", a torch floating-point dtype or its name); a
    clear error naming the valid ones otherwise (not an AttributeError from deep in the load)."""
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        found = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(found, torch.dtype) and found.is_floating_point:
            return dtype
    raise ValueError(
        f"Unknown dtype {dtype!r}: use auto (the checkpoint's own), bfloat16, float16 or float32 (any torch "
        "floating-point dtype name)."
    )


_SIZE_FIELDS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")


def check_model_config(data: dict[str, Any], path: str | os.PathLike = "config.json") -> None:
    """Refuse a config.json (as a dict) whose layers cannot be built, naming the layer and field: a
    `per_layer_config` that is not an object of layer index -> sizes, a layer index out of range, a size that is
    not a whole number >= 1, query heads that do not split evenly into KV groups."""
    if not {"num_hidden_layers", "num_attention_heads"} <= set(data):
        return  # not a decoder this package prunes: transformers checks its own
    layers = data["num_hidden_layers"]
    per_layer = data.get("per_layer_config")
    if per_layer is None:
        per_layer = {}
    if not isinstance(per_layer, dict):
        raise ModelLoadError(
            f"{path}: per_layer_config must be an object mapping layer indices to their sizes, such as "
            f'{{"3": {{"intermediate_size": 512}}}}; got a {type(per_layer).__name__}. The file was edited by hand '
            "or written by another tool: fix it or save the model again."
        )
    for key, sizes in per_layer.items():
        if not (str(key).isdigit() and int(key) < layers):
            raise ModelLoadError(
                f"{path}: per_layer_config has an entry {key!r}, but layers are numbered 0..{layers - 1}."
            )
        if not isinstance(sizes, dict):
            raise ModelLoadError(
                f"{path}: per_layer_config[{key!r}] must be an object of that layer's sizes; got "
                f"{type(sizes).__name__} {sizes!r}."
            )
    for i in range(layers):
        layer = {**data, **per_layer.get(str(i), {})}
        layer.setdefault("num_key_value_heads", layer["num_attention_heads"])
        for name in _SIZE_FIELDS:
            value = layer.get(name)
            if name in layer and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ModelLoadError(
                    f"{path}: layer {i} has {name}={value!r}; every layer needs a whole number >= 1 of them (a "
                    "layer pruned to nothing cannot be built). Fix the file or save the model again."
                )
        heads, groups = layer["num_attention_heads"], layer["num_key_value_heads"]
        if heads % groups:
            raise ModelLoadError(
                f"{path}: layer {i} has num_attention_heads={heads}, not a multiple of its num_key_value_heads="
                f"{groups} (every KV group serves the same number of query heads)."
            )


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files transformers loads from `folder` (the index's shards, or model.safetensors)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        return sorted({folder / name for name in shards.values()})
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


def _saved_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from the safetensors headers (no weight is loaded)."""
    from safetensors import safe_open

    shapes = {}
    for file in files:
        if not file.is_file():
            raise ModelLoadError(
                f"{file} is listed in the weights index but is missing: copy or save it again."
            )
        with safe_open(str(file), framework="pt") as f:
            shapes.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
    return shapes


def _named(keys: list[str]) -> str:
    shown = ", ".join(sorted(keys)[:SHOWN])
    return f"{shown} (and {len(keys) - SHOWN} more)" if len(keys) > SHOWN else shown


def _refuse_keys(
    where: str,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
    config: PretrainedConfig | None = None,
) -> None:
    """Refuse weights that do not match the model's config, naming the tensors (the first few and a count)."""
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) the config needs are missing: {_named(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) the config has no place for: {_named(unexpected)}")
    if mismatched:
        problems.append(
            f"{len(mismatched)} tensor(s) have another shape than the config gives: {_named(mismatched)}"
        )
    if not problems:
        return
    layers = sorted({int(m.group(1)) for k in missing + unexpected + mismatched if (m := _LAYER.search(k))})
    hint = ""
    from .architectures import ARCHITECTURES, layer_sizes

    if layers and getattr(config, "model_type", None) in ARCHITECTURES:
        sizes = layer_sizes(config)
        hint = (
            " config.json gives "
            + "; ".join(f"layer {i}: {sizes[i].to_dict()}" for i in layers[:SHOWN])
            + "."
        )
    raise ModelLoadError(
        f"The weights in {where} do not match its config.json: {'; '.join(problems)}.{hint} Loaded anyway, the "
        "model would compute with random values in their place: restore the weights or config.json, or save the "
        "model again."
    )


_LAYER = re.compile(r"\.layers\.(\d+)\.")


def _tensor_groups(model: torch.nn.Module) -> list[list[str]]:
    """The model's state-dict names, grouped by tensor: tied weights (lm_head and the embeddings) are one group,
    which a checkpoint holds under any one of its names."""
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return list(groups.values())


def _ignored(model: torch.nn.Module, which: str) -> list[re.Pattern]:
    patterns = getattr(model, f"_keys_to_ignore_on_load_{which}", None) or ()
    return [re.compile(p) for p in patterns]


def check_model_folder(folder: str | os.PathLike) -> tuple[PretrainedConfig, int] | None:
    """Check a local model folder as loading it would, without loading a weight: its files readable, config.json
    valid in itself (`check_model_config`), then, for an architecture this package prunes, every tensor the config
    describes present in the safetensors with its shape, and no tensor it has no place for. Returns the config and
    the model's parameter count (None for other architectures, whose load report is checked as they load); a
    ModelLoadError naming the layer, field or tensors otherwise."""
    from .architectures import ARCHITECTURES

    folder = Path(folder)
    _check_local_files(folder)
    if (
        json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
        not in ARCHITECTURES
    ):
        return None
    config = _load("config", AutoConfig, folder)
    saved = _saved_shapes(_weight_files(folder))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    expected = dict(model.state_dict(keep_vars=True))
    parameters = sum(p.numel() for p in model.parameters())
    if not saved:  # other weight formats (pytorch_model.bin): the load's own report is checked
        return config, parameters
    missing = [
        group[0]
        for group in _tensor_groups(model)
        if not any(name in saved for name in group)
        and not any(p.search(group[0]) for p in _ignored(model, "missing"))
    ]
    unexpected = [
        name
        for name in saved
        if name not in expected and not any(p.search(name) for p in _ignored(model, "unexpected"))
    ]
    mismatched = [
        f"{name} ({list(shape)} saved, {list(expected[name].shape)} in the config)"
        for name, shape in saved.items()
        if name in expected and shape != tuple(expected[name].shape)
    ]
    _refuse_keys(str(folder), missing, unexpected, mismatched, config)
    return config, parameters


def _check_local_files(folder: Path) -> None:
    """Read what a load reads first, so a damaged file is named: config.json as JSON, each safetensors header."""
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is a file; pass the model's folder (the one holding config.json).")
    config = folder / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"{folder} has no config.json: it is not a saved transformers model folder.")
    try:
        check_model_config(json.loads(config.read_text(encoding="utf-8")), config)
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
    check_model_source(source, revision=kwargs.get("revision"), cache_dir=kwargs.get("cache_dir"))
    folder = Path(os.fspath(source)).expanduser()
    local = folder.exists()
    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, AttributeError, ArithmeticError) as err:
        if not local:  # Hub errors (network, gated repo, missing file) already say what to do
            raise
        raise ModelLoadError(f"Could not load the {what} from {folder}: {type(err).__name__}: {err}") from err


_CONFIG_KWARGS = ("revision", "cache_dir", "token", "trust_remote_code", "local_files_only", "subfolder")
"""The `from_pretrained` arguments that also say where a model's config.json is."""


def load_model_config(source: str | os.PathLike, **kwargs: Any) -> PretrainedConfig:
    """The model's config (config.json alone, no weight loaded), checked as `load_model` checks it first: a local
    folder in itself and against its weights' headers (`check_model_folder`). What a recipe is checked against
    before minutes of loading. `kwargs` are `load_model`'s; those that locate the file are used."""
    check_model_source(source, revision=kwargs.get("revision"), cache_dir=kwargs.get("cache_dir"))
    folder = Path(os.fspath(source)).expanduser()
    if folder.exists():
        checked = check_model_folder(folder)
        if checked is not None:
            return checked[0]
    return _load("config", AutoConfig, source, **{k: v for k, v in kwargs.items() if k in _CONFIG_KWARGS})


def load_model(source: str | os.PathLike, **kwargs: Any) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained(source, **kwargs)`, refusing (a `ModelLoadError`, FileNotFoundError
    for a missing folder) a local folder that is damaged or whose weights do not fit its config before any weight
    loads, and any model, local or from the Hub, that loads with tensors missing, unexpected or of another shape
    (transformers would fill them with random values), naming the tensors."""
    kwargs.pop("output_loading_info", None)
    check_dtype(kwargs.get("dtype", kwargs.get("torch_dtype")))
    check_model_source(source, revision=kwargs.get("revision"), cache_dir=kwargs.get("cache_dir"))
    folder = Path(os.fspath(source)).expanduser()
    if folder.exists():
        check_model_folder(folder)
    kwargs.setdefault(
        "ignore_mismatched_sizes", True
    )  # reported below, naming the tensors, not raised unnamed
    if kwargs.get("dtype", kwargs.get("torch_dtype", "auto")) in ("auto", None) and kwargs.get(
        "device_map"
    ) in (
        None,
        "cpu",
    ):
        kwargs.pop("torch_dtype", None)
        kwargs["dtype"] = cpu_load_dtype(load_model_config(source, **kwargs))
    model, info = _load("model", AutoModelForCausalLM, source, output_loading_info=True, **kwargs)
    check_loading_info(model, info, str(source))
    return model


def cpu_has_bf16_matmuls() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX, through oneDNN). Without them (AVX2 only)
    a bf16 training-shaped matmul ran 6x slower than float32 on this project's machines."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_load_dtype(config: PretrainedConfig) -> str | torch.dtype:
    """The dtype `dtype="auto"` loads a model in on the CPU: the checkpoint's own, except a half-precision
    checkpoint on a CPU without bf16 matmuls, which loads in float32 (several times faster there; said once)."""
    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(saved, str):
        saved = getattr(torch, saved, None)
    if saved in (torch.bfloat16, torch.float16) and not cpu_has_bf16_matmuls():
        logger.warning(
            "The checkpoint is %s, but this CPU has no bf16 matmuls (AVX512-BF16 or AMX): loading it in float32, "
            "which runs several times faster here. Pass dtype=%s (--dtype %s) to keep it.",
            str(saved).removeprefix("torch."),
            str(saved).removeprefix("torch."),
            str(saved).removeprefix("torch."),
        )
        return torch.float32
    return "auto"


def check_loading_info(model: PreTrainedModel, info: dict[str, Any], where: str) -> None:
    """Refuse what `from_pretrained(..., output_loading_info=True)` reports as missing, unexpected or mismatched;
    a tied weight (lm_head sharing the embeddings) some versions report as missing is not missing."""
    names = {name: group for group in _tensor_groups(model) for name in group}
    reported = set(info.get("missing_keys") or ())
    missing = [k for k in reported if not set(names.get(k, [k])) - reported]
    mismatched = [
        f"{item[0]} ({list(item[1])} saved, {list(item[2])} in the config)"
        if isinstance(item, tuple) and len(item) == 3
        else str(item[0] if isinstance(item, tuple) else item)
        for item in info.get("mismatched_keys") or ()
    ]
    _refuse_keys(where, missing, list(info.get("unexpected_keys") or ()), mismatched, model.config)


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
