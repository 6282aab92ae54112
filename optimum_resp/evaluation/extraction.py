"""Deterministic, auditable answer extraction for GSM8K-style numeric answers and MathQA option letters.

Thinking block (applies to both tasks)
--------------------------------------
* If the completion contains ``</think>``, only the text after the LAST ``</think>`` (the "answer part")
  is searched; anything inside the thinking block is ignored.
* If the thinking block was opened (``<think>`` in the completion, or ``think_open=True`` because the
  prompt itself ended inside an open ``<think>``) but never closed, the output was cut mid-reasoning: the
  only thing accepted is a ``\\boxed{...}`` anywhere in the text (the last one; rule
  ``boxed_unclosed_think``). Otherwise there is no answer (rule ``unclosed_think``).
* Without any think tags the whole completion is the answer part.

Numeric answers (GSM8K): the first rule that yields a number wins, each using its LAST occurrence:
``boxed`` (``\\boxed{..}``/``\\fbox{..}``, nested braces, ``\\frac``; the value after a last ``=``),
``hash`` (``#### N``), ``answer_is`` ("the (final) answer is N", "answer: N"; the value after a last ``=``
on that line), ``last_number`` (the last number in the answer part), else ``no_answer``.
Numbers are normalised: integer fractions (``3/4``, ``5 / 8``), thousands commas, currency signs, trailing
units/words/percent signs, minus signs, decimals and trailing zeros (``18.00`` -> ``18``); answers are
compared numerically with a small tolerance.

Option letters (MathQA): the first rule that fires wins: ``boxed`` (a letter in the last box; a number in
the box is matched to the options: ``boxed_value``), ``answer_is`` ("answer is (c)", "answer: c",
"option c"; bare lowercase letters only before punctuation/line end, so "the answer is a bit" is no
letter), ``lone_letter`` (the answer part is just ``c``/``(c)``, or its short first line starts with
``c )``), ``option_value`` (the numeric answer, found with the numeric rules, is within 0.1% of an option's
value; the closest option wins, a tie is no answer: ``no_option_match``), else ``no_answer``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
OPTION_LETTERS = "abcde"

# Tolerances: numeric answers vs. gold, and numeric answers vs. (rounded) MathQA option values.
NUMERIC_REL_TOL = 1e-6
NUMERIC_ABS_TOL = 1e-6
OPTION_REL_TOL = 1e-3


@dataclass(frozen=True)
class Extraction:
    """An extracted answer (normalised string or None), the rule that produced it, and the source snippet."""

    answer: str | None
    rule: str
    span: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (for per-sample audit logs)."""
        return asdict(self)


@dataclass(frozen=True)
class ThinkSplit:
    """A completion split into its thinking block and its answer part; state is closed, unclosed or none."""

    thinking: str
    answer: str
    state: str


def split_thinking(text: str, think_open: bool = False) -> ThinkSplit:
    """Separate reasoning from the final answer part using the think tags (see module docstring)."""
    if THINK_CLOSE in text:
        head, _, tail = text.rpartition(THINK_CLOSE)
        return ThinkSplit(thinking=head.replace(THINK_OPEN, ""), answer=tail, state="closed")
    if think_open or THINK_OPEN in text:
        return ThinkSplit(thinking=text.replace(THINK_OPEN, ""), answer="", state="unclosed")
    return ThinkSplit(thinking="", answer=text, state="none")


# --------------------------------------------------------------------------------------------- numbers

_NUMBER_RE = re.compile(
    r"(?<![\w./])"  # not glued to a word, another number or a slash
    r"(?P<sign>[-−]\s?)?"  # ASCII or unicode minus
    r"(?:\\?[$€£]\s?)?"  # currency, also LaTeX-escaped \$
    r"(?:(?P<fnum>\d+)[ \t]?/[ \t]?(?P<fden>\d+)(?![\d/.,])"  # integer fraction 3/4 or 3 / 4
    r"|(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+))"
    r"(?![\d])"
)
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*(-?[\d.,]+)\s*\}")
_SLASH_FRAC_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\b")
_LATEX_THIN_SPACE_RE = re.compile(r"(?<=\d)\\[,!;: ]\s?(?=\d{3}\b)")


def _clean_latex_numbers(text: str) -> str:
    """Undo LaTeX number formatting: ``1{,}234`` and ``1\\,234`` become ``1,234``."""
    text = text.replace("{,}", ",")
    return _LATEX_THIN_SPACE_RE.sub(",", text)


def _canonical(value: Decimal | Fraction) -> str:
    """Canonical decimal string: no exponent, no trailing zeros, no negative zero."""
    if isinstance(value, Fraction):
        if value.denominator == 1:
            value = Decimal(value.numerator)
        else:
            value = (Decimal(value.numerator) / Decimal(value.denominator)).quantize(Decimal("1e-9"))
    text = format(value.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _number_from_match(match: re.Match[str]) -> str:
    """Canonical string for one `_NUMBER_RE` match."""
    if match.group("fnum") is not None and int(match.group("fden")) != 0:
        value: Decimal | Fraction = Fraction(int(match.group("fnum")), int(match.group("fden")))
    else:
        value = Decimal((match.group("num") or match.group("fnum")).replace(",", ""))
    if match.group("sign"):
        value = -value
    return _canonical(value)


def find_numbers(text: str) -> list[str]:
    """All numbers in ``text`` as canonical strings, in order of appearance."""
    return [_number_from_match(m) for m in _NUMBER_RE.finditer(_clean_latex_numbers(text))]


def normalize_number(text: str | int | float | None) -> str | None:
    """Normalise a short answer string to a canonical number (first number; ``\\frac``/``a/b`` supported)."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if isinstance(text, float) and not math.isfinite(text):
            return None
        return _canonical(Decimal(str(text)))
    text = _clean_latex_numbers(str(text))
    frac = _FRAC_RE.search(text)
    if frac:
        try:
            num = Fraction(frac.group(1).replace(",", ""))
            den = Fraction(frac.group(2).replace(",", ""))
            if den != 0:
                before = text[: frac.start()].rstrip()
                sign = -1 if before.endswith(("-", "−")) else 1
                return _canonical(sign * num / den)
        except (ValueError, ZeroDivisionError):
            pass
    slash = _SLASH_FRAC_RE.match(text.replace("$", ""))
    if slash and float(slash.group(2)) != 0:
        return _canonical(Fraction(slash.group(1)) / Fraction(slash.group(2)))
    numbers = find_numbers(text)
    return numbers[0] if numbers else None


def _as_float(text: str) -> float | None:
    """Float value of a canonical or raw number string (None if it holds no number)."""
    try:
        return float(Decimal(text))
    except (InvalidOperation, ValueError):
        value = normalize_number(text)
        return float(Decimal(value)) if value is not None else None


def numbers_equal(a: str | None, b: str | None, rel_tol: float = NUMERIC_REL_TOL) -> bool:
    """Numeric equality of two canonical (or raw) number strings with a small tolerance; None never matches."""
    x = _as_float(a) if a is not None else None
    y = _as_float(b) if b is not None else None
    if x is None or y is None:
        return False
    return math.isclose(x, y, rel_tol=rel_tol, abs_tol=NUMERIC_ABS_TOL)


# --------------------------------------------------------------------------------------------- boxed

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*")


def find_boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}``/``\\fbox{...}`` (balanced nested braces; ``\\boxed 5`` too)."""
    found: list[str] = []
    for match in _BOXED_RE.finditer(text):
        pos = match.end()
        if pos < len(text) and text[pos] == "{":
            depth, i = 0, pos
            while i < len(text):
                if text[i] == "{":
                    depth += 1
                elif text[i] == "}":
                    depth -= 1
                    if depth == 0:
                        found.append(text[pos + 1 : i])
                        break
                i += 1
        else:
            token = re.match(r"[^\s$]+", text[pos:])
            if token:
                found.append(token.group(0))
    return found


def _number_in_box(content: str) -> str | None:
    """The number a boxed expression states: after the last ``=``, else its first number."""
    if "=" in content:
        content = content.rsplit("=", 1)[1]
    return normalize_number(content)


# --------------------------------------------------------------------------------------------- GSM8K

_HASH_RE = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS_RE = re.compile(
    r"(?:final\s+answer|answer)\s*(?:\*\*)?\s*(?:is|would\s+be|will\s+be|=|:)\s*:?",
    re.IGNORECASE,
)


# Where an "answer is ..." sentence ends: a parenthesis after some text, or a sentence mark that is not
# a decimal point ("3.5") or a thousands mark inside a number.
_CLAUSE_END_RE = re.compile(r"(?<=\S)\s*\(|[.!?;](?!\d)")


def _answer_clause(tail: str) -> str:
    """The stated answer up to the end of its sentence, so a check after it cannot be taken for it."""
    end = _CLAUSE_END_RE.search(tail.lstrip())
    stripped = tail.lstrip()
    return stripped if end is None else stripped[: end.start()]


def _numeric_from_answer_part(answer: str) -> Extraction:
    """Apply the numeric rules (boxed, ####, answer is, last number) to an answer part."""
    for content in reversed(find_boxed(answer)):
        value = _number_in_box(content)
        if value is not None:
            return Extraction(value, "boxed", content.strip())
    for match in reversed(list(_HASH_RE.finditer(answer))):
        value = normalize_number(match.group(1))
        if value is not None:
            return Extraction(value, "hash", match.group(0).strip())
    for match in reversed(list(_ANSWER_IS_RE.finditer(answer))):
        tail = answer[match.end() :].split("\n", 1)[0]
        clause = _answer_clause(tail)
        # "the answer is 5 + 6 = 11" states 11; a later "(Check: 3*4 = 12.)" states nothing.
        value = _number_in_box(clause)
        if value is None:
            clause = tail
            value = _number_in_box(tail)
        if value is not None:
            return Extraction(value, "answer_is", (match.group(0) + clause).strip())
    numbers = list(_NUMBER_RE.finditer(_clean_latex_numbers(answer)))
    if numbers:
        return Extraction(_number_from_match(numbers[-1]), "last_number", numbers[-1].group(0).strip())
    return Extraction(None, "no_answer")


def extract_numeric_answer(completion: str, think_open: bool = False) -> Extraction:
    """Extract a GSM8K-style numeric answer from a model completion (rules in the module docstring)."""
    split = split_thinking(completion, think_open)
    if split.state == "unclosed":
        boxes = [(c, _number_in_box(c)) for c in find_boxed(completion)]
        boxes = [(c, v) for c, v in boxes if v is not None]
        if boxes:
            content, value = boxes[-1]
            return Extraction(value, "boxed_unclosed_think", content.strip())
        return Extraction(None, "unclosed_think")
    return _numeric_from_answer_part(split.answer)


def extract_gsm8k_gold(answer_field: str) -> str:
    """Gold number of a GSM8K ``answer`` field: the text after the last ``####``, normalised."""
    if "####" not in answer_field:
        raise ValueError(f"GSM8K answer has no '####' marker: {answer_field[-80:]!r}")
    value = normalize_number(answer_field.rsplit("####", 1)[1])
    if value is None:
        raise ValueError(f"GSM8K answer has no number after '####': {answer_field[-80:]!r}")
    return value


# --------------------------------------------------------------------------------------------- MathQA

_OPTION_LABEL_RE = r"(?:^|(?<=[\s,;\[\('\"]))\(?\s*{letter}\s*\)"


def parse_mathqa_options(options: str | Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """Parse MathQA options (``'a ) 38 , b ) 27.675 , ...'``, a list, or a dict) into ``{letter: text}``."""
    if isinstance(options, Mapping):
        return {str(k).strip().lower(): str(v).strip() for k, v in options.items()}
    if not isinstance(options, str):
        parsed: dict[str, str] = {}
        for i, item in enumerate(options):
            text = str(item).strip()
            label = re.match(r"^\(?\s*([a-eA-E])\s*[).:]\s*", text)
            letter = label.group(1).lower() if label else OPTION_LETTERS[i]
            parsed[letter] = text[label.end() :].strip() if label else text
        return parsed
    text = options.strip().strip("[]").strip()
    starts: list[tuple[str, int, int]] = []
    pos = 0
    for letter in OPTION_LETTERS:
        match = re.compile(_OPTION_LABEL_RE.format(letter=letter), re.IGNORECASE).search(text, pos)
        if not match:
            break
        starts.append((letter, match.start(), match.end()))
        pos = match.end()
    if not starts:
        raise ValueError(f"Cannot parse MathQA options {options!r}: expected 'a ) ... , b ) ...'")
    parsed = {}
    for k, (letter, _, end) in enumerate(starts):
        stop = starts[k + 1][1] if k + 1 < len(starts) else len(text)
        parsed[letter] = text[end:stop].strip(" \t\n,;'\"")
    return parsed


def option_value(text: str) -> float | None:
    """Numeric value of an option text (``'rs . 1,200'`` -> 1200, ``'5 / 7'`` -> 0.714..., words -> None)."""
    slash = _SLASH_FRAC_RE.search(text)
    if slash and float(slash.group(2)) != 0:
        before = text[: slash.start()]
        if not find_numbers(before):
            return float(Fraction(slash.group(1)) / Fraction(slash.group(2)))
    value = normalize_number(text)
    return float(Decimal(value)) if value is not None else None


def match_option_value(value: str | None, options: Mapping[str, str]) -> str | None:
    """The option letter whose value equals ``value`` (closest within tolerance; None if none or a tie)."""
    if value is None:
        return None
    target = float(Decimal(value))
    scored: list[tuple[float, str]] = []
    for letter, text in options.items():
        opt = option_value(text)
        if opt is not None and math.isclose(target, opt, rel_tol=OPTION_REL_TOL, abs_tol=NUMERIC_ABS_TOL):
            scored.append((abs(target - opt), letter))
    if not scored:
        return None
    scored.sort()
    if len(scored) > 1 and scored[0][0] == scored[1][0]:
        return None
    return scored[0][1]


_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mathit|textit)\s*\{([^{}]*)\}")
_CHOICE_PHRASE_RE = re.compile(
    r"(?:answer|option|choice)(?:\s+(?:is|would\s+be|will\s+be))?\s*[:=]?\s*(?:(?:option|choice)\s*)?",
    re.IGNORECASE,
)
_LONE_LETTER_RE = re.compile(r"^[\s*]*\(?\s*([a-e])\s*\)?[\s*]*\.?[\s*]*$", re.IGNORECASE)
_LEADING_LABEL_RE = re.compile(r"^[\s*]*\(?\s*([a-e])\s*\)", re.IGNORECASE)


def _letter_in_box(content: str) -> str | None:
    """Option letter stated inside a box (``c``, ``(C)``, ``\\text{c}``, ``c ) 30``), else None."""
    content = _TEXT_WRAPPER_RE.sub(r"\1", content).strip().strip("$").strip()
    if len(content) == 1 and content.lower() in OPTION_LETTERS:
        return content.lower()
    match = re.match(r"^\(?\s*([a-eA-E])\s*\)", content)
    if match:
        return match.group(1).lower()
    match = re.match(r"^([a-eA-E])(?:[.:]\s.*|[.:])?$", content)
    return match.group(1).lower() if match else None


def _letter_after_phrase(tail: str, after_option_word: bool) -> str | None:
    """The option letter right after an answer phrase, refusing English words (``the answer is a bit``)."""
    tail = tail.lstrip(" \t*")
    match = re.match(r"\(\s*([a-eA-E])\s*\)", tail) or re.match(r"([a-eA-E])\s*\)", tail)
    if match:
        return match.group(1).lower()
    # A bare lowercase letter must end the line or precede punctuation ("answer: c."); after the words
    # "option"/"choice" or for an uppercase B-E any word boundary will do ("option c is", "answer is B because").
    match = re.match(r"([a-eA-E])(?=[ \t*]*(?:$|\n|[.,;:!\]]))", tail)
    if match is None:
        match = re.match(r"([a-eA-E])\b" if after_option_word else r"([B-E])\b", tail)
    return match.group(1).lower() if match else None


def _choice_from_answer_part(answer: str, options: Mapping[str, str] | None) -> Extraction:
    """Apply the option-letter rules to an answer part."""
    for content in reversed(find_boxed(answer)):
        letter = _letter_in_box(content)
        if letter is not None:
            return Extraction(letter, "boxed", content.strip())
        if options:
            letter = match_option_value(_number_in_box(content), options)
            if letter is not None:
                return Extraction(letter, "boxed_value", content.strip())
    for match in reversed(list(_CHOICE_PHRASE_RE.finditer(answer))):
        after_option_word = re.search(r"(?:option|choice)\s*$", match.group(0), re.IGNORECASE) is not None
        letter = _letter_after_phrase(answer[match.end() :], after_option_word)
        if letter is not None:
            return Extraction(letter, "answer_is", answer[match.start() : match.end() + 4].strip())
    stripped = answer.strip()
    first_line = stripped.split("\n", 1)[0]
    match = _LONE_LETTER_RE.match(stripped)
    if match is None and len(first_line) <= 40:  # "c ) 30", not an enumerated explanation "a) First, ..."
        match = _LEADING_LABEL_RE.match(first_line)
    if match:
        return Extraction(match.group(1).lower(), "lone_letter", stripped[:20])
    if options:
        numeric = _numeric_from_answer_part(answer)
        if numeric.answer is not None:
            letter = match_option_value(numeric.answer, options)
            if letter is not None:
                return Extraction(letter, "option_value", numeric.span)
            return Extraction(None, "no_option_match", numeric.span)
    return Extraction(None, "no_answer")


def extract_choice_answer(
    completion: str,
    options: str | Sequence[str] | Mapping[str, str] | None = None,
    think_open: bool = False,
) -> Extraction:
    """Extract a MathQA option letter (a-e) from a completion; numeric answers are matched to ``options``."""
    parsed = parse_mathqa_options(options) if options is not None else None
    split = split_thinking(completion, think_open)
    if split.state == "unclosed":
        for content in reversed(find_boxed(completion)):
            letter = _letter_in_box(content)
            if letter is None and parsed:
                letter = match_option_value(_number_in_box(content), parsed)
            if letter is not None:
                return Extraction(letter, "boxed_unclosed_think", content.strip())
        return Extraction(None, "unclosed_think")
    return _choice_from_answer_part(split.answer, parsed)


def normalize_choice(letter: str) -> str:
    """Normalise a gold option label (``'c'``, ``'C'``, ``'(c)'``) to a lowercase letter a-e."""
    cleaned = str(letter).strip().strip("()").strip().lower()
    if len(cleaned) != 1 or cleaned not in OPTION_LETTERS:
        raise ValueError(f"MathQA 'correct' must be one of a-e, got {letter!r}")
    return cleaned


__all__ = [
    "Extraction",
    "ThinkSplit",
    "extract_choice_answer",
    "extract_gsm8k_gold",
    "extract_numeric_answer",
    "find_boxed",
    "find_numbers",
    "match_option_value",
    "normalize_choice",
    "normalize_number",
    "numbers_equal",
    "option_value",
    "parse_mathqa_options",
    "split_thinking",
]
