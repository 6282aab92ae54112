"""per_layer exports in llama.cpp, with no change to llama.cpp: a GGUF of a graph that takes sizes per layer.

`write_gguf(folder, "model.gguf", outtype="q8_0")` (CLI `optimum-resp export-gguf`) writes a Qwen3 per_layer
export as llama.cpp's `openelm` graph and a Qwen2 or Llama one as its `deci` graph, through gguf-py and llama.cpp's
own converter code for the tokenizer; `LlamaCppModel` runs a GGUF under the evaluation harness. Needs the `gguf`
package and llama.cpp's converter (llama-cpp-python to run); imports them only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .checks import GGUFExportError
from .graphs import GRAPHS, GGUFGraph

if TYPE_CHECKING:
    from .engine import LlamaCppModel
    from .writer import write_gguf

__all__ = ["GRAPHS", "GGUFExportError", "GGUFGraph", "LlamaCppModel", "write_gguf"]


def __getattr__(name: str) -> Any:
    """gguf-py and llama-cpp-python are imported with what needs them, not with this package."""
    if name == "write_gguf":
        from .writer import write_gguf

        return write_gguf
    if name == "LlamaCppModel":
        from .engine import LlamaCppModel

        return LlamaCppModel
    raise AttributeError(name)
