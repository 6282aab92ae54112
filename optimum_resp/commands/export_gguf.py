"""`optimum-resp export-gguf`: a per_layer export as a GGUF llama.cpp loads as it ships.

Qwen3 (tied embeddings, no biases) is written as llama.cpp's `openelm` graph, Qwen2 and Llama as its `deci`
graph: both build every layer at its own size. The tokenizer and chat template come from llama.cpp's own
converter (--converter, or $RESP_LLAMA_CPP_CONVERTER). Uniform exports are stock checkpoints: convert those
with llama.cpp's convert_hf_to_gguf.py.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  optimum-resp export-gguf qwen3-0.6b-resp40 --outfile qwen3-0.6b-resp40.gguf --outtype q8_0 \\
      --converter llama.cpp/convert_hf_to_gguf.py
  llama-cli -m qwen3-0.6b-resp40.gguf
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export-gguf",
        help="write a per_layer export as a GGUF for llama.cpp",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("directory", help="a per_layer export (a folder `optimum-resp prune` wrote)")
    p.add_argument("--outfile", required=True, help="the .gguf file to write")
    p.add_argument("--outtype", choices=["f32", "f16", "q8_0"], default="f16")
    p.add_argument(
        "--converter",
        default=None,
        help="llama.cpp's convert_hf_to_gguf.py, whose code writes the tokenizer (default: $RESP_LLAMA_CPP_CONVERTER)",
    )
    p.add_argument(
        "--tokenizer-pre",
        default=None,
        metavar="NAME",
        help="llama.cpp's name of the tokenizer's pre-tokenizer, for one its converter does not know",
    )
    p.set_defaults(resp_func=run)


def run(args: argparse.Namespace) -> int:
    from ..integrations.llama_cpp import write_gguf

    path = write_gguf(
        args.directory,
        args.outfile,
        args.outtype,
        converter=args.converter,
        tokenizer_pre=args.tokenizer_pre,
    )
    print(
        f"Wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); run it with llama.cpp, e.g. llama-cli -m {path}"
    )
    return 0
