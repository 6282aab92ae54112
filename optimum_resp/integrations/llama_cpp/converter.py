"""llama.cpp's own converter, run for what it already does for a per_layer export's base architecture.

The converter (convert_hf_to_gguf.py and its `conversion` package, from a llama.cpp checkout or the
llama-cpp-python sdist) has a class per stock architecture that writes the tokenizer (vocabulary, merges,
special tokens, chat template), the general metadata (from the folder's model card) and the global
hyperparameters (context length, rope base and scaling, norm epsilon, head size), and generates extra tensors
(Llama 3's rope factors). The writer runs the stock class of the export's architecture against its own
GGUFWriter and then sets only what per_layer changes: the per-layer head counts and MLP widths.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import gguf

from ...architectures import ArchitectureSpec, LayerSizes
from .checks import GGUFExportError
from .pretokenizers import llama_cpp_pre_tokenizer

__all__ = ["CONVERTER_ENV", "converter_package", "per_layer_keys", "stock_converter"]

logger = logging.getLogger(__name__)

CONVERTER_ENV = "RESP_LLAMA_CPP_CONVERTER"
"""Environment variable naming llama.cpp's convert_hf_to_gguf.py, when `converter` is not passed."""


def converter_package(converter: str | os.PathLike | None = None) -> ModuleType:
    """llama.cpp's `conversion` package, from the folder of `converter` (convert_hf_to_gguf.py or its folder)."""
    location = converter or os.environ.get(CONVERTER_ENV)
    if not location:
        raise GGUFExportError(
            "the GGUF writer takes the tokenizer and chat template from llama.cpp's own converter: pass "
            f"converter= (CLI --converter) or set {CONVERTER_ENV} to llama.cpp's convert_hf_to_gguf.py (in a "
            "llama.cpp checkout, or the llama-cpp-python sdist under vendor/llama.cpp/)"
        )
    folder = Path(location).expanduser().resolve()
    folder = folder.parent if folder.is_file() else folder
    if not (folder / "conversion" / "__init__.py").is_file():
        raise GGUFExportError(
            f"{location} is not llama.cpp's converter: {folder} has no conversion/ package beside "
            "convert_hf_to_gguf.py (llama.cpp has had it since the converter was split into modules; use a newer "
            "llama.cpp)"
        )
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    try:
        return importlib.import_module("conversion")
    except (ImportError, AttributeError) as err:
        raise GGUFExportError(
            f"llama.cpp's converter in {folder} does not import ({type(err).__name__}: {err}); install the gguf "
            f"package of the same llama.cpp: pip install {folder / 'gguf-py'}"
        ) from err


def _pre_tokenizer(folder: Path, given: str | None, theirs: Callable[[Any], str]) -> Callable[[Any], str]:
    """The converter's `get_vocab_base_pre`, preceded by an explicit name and by optimum-resp's known rules."""

    def pick(tokenizer: Any) -> str:
        if given:
            return given
        known = llama_cpp_pre_tokenizer(folder)
        if known is not None:
            logger.info("Tokenizer pre-tokenizer written as llama.cpp's %r: %s.", *known)
            return known[0]
        try:
            return theirs(tokenizer)
        except NotImplementedError as err:
            raise GGUFExportError(
                "llama.cpp's converter does not know this tokenizer's pre-tokenizer (it names them by hashing the "
                "tokens of a probe text), so llama.cpp would not split text as the tokenizer does: pass "
                "tokenizer_pre= (CLI --tokenizer-pre) naming the llama.cpp pre-tokenizer that splits text as yours "
                "does (the names are in llama.cpp's src/llama-vocab.cpp, e.g. 'gpt-2', 'qwen2', 'llama-bpe')"
            ) from err

    return pick


def stock_converter(
    conversion: ModuleType,
    spec: ArchitectureSpec,
    folder: Path,
    out: Path,
    ftype: gguf.LlamaFileType,
    tokenizer_pre: str | None = None,
) -> Any:
    """The converter's model class for the stock architecture, on `folder` read as a stock checkpoint."""
    hparams = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    hparams.update(model_type=spec.model_type, architectures=[spec.causal_lm_class.__name__])
    model_class = conversion.get_model_class(spec.causal_lm_class.__name__)
    model = model_class(folder, ftype, out, hparams=hparams)
    model.get_vocab_base_pre = _pre_tokenizer(folder, tokenizer_pre, model.get_vocab_base_pre)
    return model


def per_layer_keys(writer: gguf.GGUFWriter, layers: list[LayerSizes], head_dim: int) -> None:
    """Replace the converter's global sizes with per-layer arrays (llama.cpp's `get_key_or_arr` reads either)."""
    keys = gguf.Keys
    for key in (
        keys.Attention.HEAD_COUNT,
        keys.Attention.HEAD_COUNT_KV,
        keys.LLM.FEED_FORWARD_LENGTH,
        keys.Attention.KEY_LENGTH,
        keys.Attention.VALUE_LENGTH,
        keys.Rope.DIMENSION_COUNT,
    ):
        writer.remove_key(key.format(arch=writer.arch))
    writer.add_head_count([s.num_attention_heads for s in layers])
    writer.add_head_count_kv([s.num_key_value_heads for s in layers])
    writer.add_feed_forward_length([s.intermediate_size for s in layers])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
