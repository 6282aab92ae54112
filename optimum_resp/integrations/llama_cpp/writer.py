"""`write_gguf`: a per_layer export as a GGUF file llama.cpp loads as it ships (no change to llama.cpp).

Qwen3 exports are written as llama.cpp's `openelm` graph, Qwen2 and Llama exports as its `deci` graph (see
graphs.py for why each computes the export's layers exactly). Everything is decided before a byte is written:
the export is checked (checks.py), llama.cpp's converter writes the tokenizer and global metadata into the
writer (converter.py), and every tensor's name, shape and type is laid out (tensors.py). Only then are the
tensors streamed, one at a time, into a temporary file that replaces the output when complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import torch
from safetensors import safe_open
from transformers import AutoConfig, PretrainedConfig

from ...architectures import ARCHITECTURES, ArchitectureSpec, get_architecture, layer_sizes
from ...files import atomic_write
from .checks import GGUFExportError, checkpoint_problems, layer_problems, output_problem, shape_problems
from .converter import converter_package, per_layer_keys, stock_converter
from .graphs import GRAPHS, GGUFGraph
from .tensors import OUTTYPES, TensorRecipe, encode, stored_shape, tensor_recipes, tensor_type

__all__ = ["write_gguf"]

logger = logging.getLogger(__name__)

# Checkpoint tensors no GGUF tensor is made from, on purpose: a tied lm_head (transformers ties it on load).
_UNUSED_WHEN_TIED = ("lm_head.weight",)


class Checkpoint:
    """The safetensors files of a saved model: every tensor's shape, and one tensor at a time on request."""

    def __init__(self, folder: Path) -> None:
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise GGUFExportError(
                f"{folder} has no *.safetensors weights: pass the folder a prune was saved to"
            )
        self.files: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for path in files:
            with safe_open(path, framework="pt") as f:
                for name in f.keys():
                    self.files[name] = path
                    self.shapes[name] = tuple(f.get_slice(name).get_shape())

    def load(self, name: str) -> torch.Tensor:
        with safe_open(self.files[name], framework="pt") as f:
            return f.get_tensor(name)


def read_export(folder: Path) -> tuple[PretrainedConfig, ArchitectureSpec]:
    """The config and architecture of a per_layer export; a refusal for anything else."""
    if not (folder / "config.json").is_file():
        raise GGUFExportError(f"{folder} has no config.json: pass the folder a per_layer prune was saved to")
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as err:
        raise GGUFExportError(
            f"{folder / 'config.json'} does not load as a transformers config ({type(err).__name__}: {err}): pass "
            "the folder a per_layer prune was saved to"
        ) from err
    model_type = config.model_type
    per_layer_types = sorted(spec.per_layer_model_type for spec in ARCHITECTURES.values())
    if model_type in ARCHITECTURES and ARCHITECTURES[model_type].model_type == model_type:
        raise GGUFExportError(
            f"{folder} is a stock {model_type} checkpoint (a uniform export, or a model never pruned): llama.cpp's "
            f"own converter takes it, `python convert_hf_to_gguf.py {folder} --outfile model.gguf`; export-gguf "
            f"writes per_layer exports ({', '.join(per_layer_types)})"
        )
    if model_type not in per_layer_types:
        raise GGUFExportError(
            f"{folder} has model_type {model_type!r}, not an optimum-resp per_layer export "
            f"({', '.join(per_layer_types)}): prune with export='per_layer' first"
        )
    return config, get_architecture(config)


@dataclass
class GGUFPlan:
    """A GGUF laid out and checked, metadata set: `write(path)` only streams the tensors into a file."""

    writer: gguf.GGUFWriter
    tensors: list[tuple[str, gguf.GGMLQuantizationType, Callable[[], torch.Tensor]]]

    def write(self, path: Path) -> None:
        try:
            self.writer.write_header_to_file(path=path)
            self.writer.write_kv_data_to_file()
            self.writer.write_ti_data_to_file()
            for _, qtype, load in self.tensors:
                self.writer.write_tensor_data(encode(load(), qtype))
        finally:
            self.writer.close()


def _loader(checkpoint: Checkpoint, recipe: TensorRecipe) -> Callable[[], torch.Tensor]:
    return lambda: recipe.make([checkpoint.load(s) for s in recipe.sources])


def _check_tensors(
    recipes: Sequence[TensorRecipe],
    checkpoint: Checkpoint,
    tied: bool,
    graph: GGUFGraph,
    extra: Sequence[str],
) -> None:
    """Every recipe's sources exist, every checkpoint tensor is used, and every extra tensor belongs to the graph."""
    used = {s for r in recipes for s in r.sources} | (set(_UNUSED_WHEN_TIED) if tied else set())
    missing = sorted(s for r in recipes for s in r.sources if s not in checkpoint.shapes)
    unused = sorted(set(checkpoint.shapes) - used)
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == graph.arch)
    known = {f"{gguf.TENSOR_NAMES[t]}.weight" for t in gguf.MODEL_TENSORS[arch]}
    foreign = [name for name in extra if name not in known]
    if missing or unused or foreign:
        raise GGUFExportError(
            f"the weights do not fit llama.cpp's {graph.arch} graph ({graph.source}): "
            + "; ".join(
                text
                for text, names in (
                    ("missing", missing),
                    ("with no place in the graph", unused),
                    ("converter tensors the graph does not load", foreign),
                )
                if names
                for text in [f"{text}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"]
            )
        )


def plan_gguf(
    folder: Path, out: Path, outtype: str, converter: str | os.PathLike | None, tokenizer_pre: str | None
) -> GGUFPlan:
    """Check the export, lay out its tensors and set the GGUF's metadata; refuses before anything is written."""
    config, spec = read_export(folder)
    graph = GRAPHS.lookup(spec.model_type)
    layers = layer_sizes(config)
    checkpoint = Checkpoint(folder)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    problems = layer_problems(layers, graph) or shape_problems(spec, config, layers, checkpoint.shapes)
    problems += checkpoint_problems(spec, graph, config, checkpoint.shapes, tied)
    if problems:
        raise GGUFExportError(
            f"{folder} cannot be written as llama.cpp's {graph.arch} graph: " + "; ".join(problems)
        )

    stock = stock_converter(converter_package(converter), spec, folder, out, OUTTYPES[outtype], tokenizer_pre)
    extra = [(name, t.detach().to(torch.float32)) for name, t in stock.generate_extra_tensors()]
    recipes = tensor_recipes(spec, graph, layers, checkpoint.shapes, tied)
    _check_tensors(recipes, checkpoint, tied, graph, [name for name, _ in extra])

    writer = gguf.GGUFWriter(path=None, arch=graph.arch)
    tensors = []
    made = [(r.name, r.shape, _loader(checkpoint, r)) for r in recipes]
    made += [(name, tuple(t.shape), lambda t=t: t) for name, t in extra]
    fallback = []
    for name, shape, load in made:
        qtype = tensor_type(name, shape, outtype)
        if outtype == "q8_0" and qtype == gguf.GGMLQuantizationType.F16:
            fallback.append(name)
        stored, dtype = stored_shape(shape, qtype)
        writer.add_tensor_info(name, stored, dtype, int(dtype.itemsize * torch.Size(stored).numel()), qtype)
        tensors.append((name, qtype, load))
    if fallback:
        logger.info(
            "%d tensor(s) kept in f16, their rows not a multiple of q8_0's 32 values (%s); pruning with "
            "channel_multiple=32 makes every MLP width quantizable.",
            len(fallback),
            ", ".join(fallback[:4]) + (" ..." if len(fallback) > 4 else ""),
        )
    stock.gguf_writer = writer
    stock.prepare_metadata(vocab_only=False)  # general.*, global hyperparameters, tokenizer, chat template
    per_layer_keys(writer, layers, spec.head_dim(config))
    return GGUFPlan(writer, tensors)


def write_gguf(
    folder: str | os.PathLike,
    out_path: str | os.PathLike,
    outtype: str = "f16",
    *,
    converter: str | os.PathLike | None = None,
    tokenizer_pre: str | None = None,
) -> Path:
    """Write the per_layer export in `folder` as a GGUF llama.cpp loads; returns the path written.

    `outtype`: f32, f16 or q8_0 (norms and biases stay f32, as llama.cpp's converter keeps them). `converter`:
    llama.cpp's convert_hf_to_gguf.py (default: $RESP_LLAMA_CPP_CONVERTER), whose code writes the tokenizer and
    chat template. `tokenizer_pre`: llama.cpp's name for the tokenizer's pre-tokenizer, for one its converter
    does not know. Anything the llama.cpp graph cannot express is refused (`GGUFExportError`, a ValueError)
    before a file is touched, and the file appears only when complete.
    """
    folder, out = Path(folder), Path(out_path)
    if outtype not in OUTTYPES:
        raise GGUFExportError(f"outtype must be one of {list(OUTTYPES)}; got {outtype!r}")
    if not folder.is_dir():
        raise GGUFExportError(f"{folder} is not a folder: pass the folder a per_layer prune was saved to")
    problem = output_problem(out)
    if problem:
        raise GGUFExportError(problem)
    plan = plan_gguf(folder, out, outtype, converter, tokenizer_pre)
    atomic_write(out, plan.write)
    logger.info("Wrote %s (%s, %.1f MiB).", out, outtype, out.stat().st_size / 2**20)
    return out
