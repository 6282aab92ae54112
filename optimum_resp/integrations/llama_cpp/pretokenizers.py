r"""Pre-tokenizers llama.cpp's converter does not list, and the llama.cpp pre-tokenizer that splits text as they do.

llama.cpp's converter names a BPE tokenizer's pre-tokenizer (`tokenizer.ggml.pre`, which picks the regexes
llama.cpp splits text with) by hashing the tokens of a probe text, and refuses a hash it has no entry for. The
testbed reasoner's tokenizer has none: it isolates every digit with its optional leading space
(`Split(" ?\p{N}")`) before GPT-2's byte-level regex, a split no llama.cpp pre-tokenizer makes. It still
tokenizes every text as llama.cpp's `gpt-2` pre-tokenizer does, because BPE merges only within a piece and its
vocabulary never merges across what the extra split separates: no merge joins two digits (GPT-2's regex keeps
" 123" as one piece, which BPE then splits back into " 1", "2", "3"), and none joins two whitespace characters
(where GPT-2's `\s+(?!\S)` look-ahead splits a whitespace run before a digit differently). A rule applies
only when the tokenizer's own merges meet its condition.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["PRE_TOKENIZER_RULES", "PreTokenizerRule", "byte_level_text", "llama_cpp_pre_tokenizer"]

Merge = tuple[str, str]


@cache
def _byte_level_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable stand-in character -> the byte it stands for."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def byte_level_text(token: str) -> str:
    """The text a byte-level BPE token stands for ('Ġ12' -> ' 12'); bytes of a split character are dropped."""
    table = _byte_level_chars()
    return bytes(table[c] for c in token if c in table).decode("utf-8", errors="ignore")


def _joins_digits_or_whitespace(merges: Sequence[Merge]) -> bool:
    """Whether some merge makes a token with two digits, or with two whitespace characters side by side."""
    for left, right in merges:
        text = byte_level_text(left + right)
        if sum(ch.isnumeric() for ch in text) > 1:
            return True
        if any(a.isspace() and b.isspace() for a, b in zip(text, text[1:])):
            return True
    return False


@dataclass(frozen=True)
class PreTokenizerRule:
    """A tokenizer.json pre-tokenizer llama.cpp's converter does not know, and the llama.cpp one equal to it."""

    llama_cpp_name: str
    """The `tokenizer.ggml.pre` value (src/llama-vocab.cpp)."""
    pre_tokenizer: dict[str, Any]
    """The tokenizer.json `pre_tokenizer` the rule is about, exactly."""
    holds: Callable[[Sequence[Merge]], bool]
    """The condition on the vocabulary's merges under which the two split every text into the same tokens."""
    why: str


PRE_TOKENIZER_RULES: tuple[PreTokenizerRule, ...] = (
    PreTokenizerRule(
        llama_cpp_name="gpt-2",
        pre_tokenizer={
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": " ?\\p{N}"}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        },
        holds=lambda merges: not _joins_digits_or_whitespace(merges),
        why="digits split off (with their leading space) before GPT-2's byte-level regex, and no merge joins two "
        "digits or two whitespace characters: GPT-2's regex alone gives the same tokens",
    ),
)


def _merges(model: dict[str, Any]) -> list[Merge]:
    """tokenizer.json's merges, in either of its two spellings ("a b" or ["a", "b"])."""
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1]) for m in model.get("merges", [])]


def llama_cpp_pre_tokenizer(folder: str | Path) -> tuple[str, str] | None:
    """(llama.cpp pre-tokenizer name, why) for a folder whose tokenizer.json a rule covers; None otherwise."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        return None
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        return None
    for rule in PRE_TOKENIZER_RULES:
        if tokenizer.get("pre_tokenizer") == rule.pre_tokenizer and rule.holds(_merges(model)):
            return rule.llama_cpp_name, rule.why
    return None
