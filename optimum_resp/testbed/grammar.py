"""The testbed's grammar: the phrasings, sentence templates and names its word problems are built from.

Every operation is said in many sentence frames (who acts, active and passive voice, rates and "each / per",
comparisons "3 more than", "twice as many as", "half as many as"); a frame is a template whose slots each take one
of a few phrasings (`GRAMMAR`), and one combination of phrasings in `HELD_OUT_EVERY` is held out as family B, with
names never used in family A. The generator (`compositional`) draws its sentences from `FRAMES_BY_TEMPLATE`.
"""

from __future__ import annotations

import itertools
import random

__all__ = [
    "COMPARISON_KIND",
    "FRAMES",
    "FRAMES_BY_TEMPLATE",
    "GRAMMAR",
    "HELD_OUT_EVERY",
    "NAMES",
    "NUMBER_WORDS",
    "PART",
    "TIMES",
    "made_up_name",
    "person",
]

NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()
TIMES = {2: "twice", 3: "three times", 4: "four times", 5: "five times"}
PART = {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth"}

NAMES = {
    "A": (
        "Mia Liam Emma Noah Olivia Lucas Sofia Ethan Zoe Omar Lena Ivan Priya Kenji Maya Leo Nora Ben Chloe Sam "
        "Anna Max Lily Tom Ruby Adam Julia Oscar Nina Paul Rosa Alex Kate Hassan Mei Pedro Sara Luca Iris Dan"
    ).split(),
    "B": (
        "Tara Hugo Ines Ravi Yuki Isla Otto Aisha Diego Grace Felix Amara Bruno Clara Dmitri Esme Farid Greta "
        "Hiro Ada"
    ).split(),
}
"""Real names per family. Family A problems also use made-up names (`made_up_name`) half of the time: with only
forty names a model learns each one as a word; with unbounded names it must copy the question's, which is what
lets it answer about people it has never seen (family B)."""

_ONSETS = "B C D F G H J K L M N P R S T V W Y Z Br Ch Cl Dr Fl Gr Kr Pr Sh St Tr".split()
_VOWELS = "a e i o u a e i o ai ea ia io".split()
_CODAS = ["", "", "", "", "", "", "n", "r", "l", "s", "m", "x", "k", "d", "t"]


def made_up_name(rng: random.Random) -> str:
    """A pronounceable two- or three-syllable name, never one of the real names of either family."""
    while True:
        onsets = [rng.choice(_ONSETS)] + [rng.choice(_ONSETS[:19]) for _ in range(rng.choice((1, 1, 1, 2)))]
        syllables = [onset + rng.choice(_VOWELS) + rng.choice(_CODAS) for onset in onsets]
        name = syllables[0] + "".join(s.lower() for s in syllables[1:])
        if name not in _REAL_NAMES:
            return name


_REAL_NAMES = frozenset(NAMES["A"] + NAMES["B"])


def person(rng: random.Random, family: str) -> str:
    """A name of `family`: family A's is made up half of the time (see NAMES)."""
    return made_up_name(rng) if family == "A" and rng.random() < 0.5 else rng.choice(NAMES[family])


_OPEN_START = ["", "At first, ", "On Monday, ", "To begin with, ", "In the morning, "]
_OPEN = ["", "Then ", "Later, ", "Next, ", "After that, "]
_HOLD = ["has", "owns", "keeps", "holds"]
_HOLD_BARE = ["have", "own", "keep", "hold"]
_STOCK = ["stock", "pile", "collection", "supply"]
_EVENLY = ["equally", "evenly", "fairly"]
_COMPARE = ["Compared with", "Compared to", "Next to"]
_DOES = ["", " does"]
_WHEN = [" now", " in the end", " at the end", " after all this"]


def _compare(word: str) -> list[tuple[str, dict[str, list[str]]]]:
    """Comparison templates ("3 more than", "twice as many as") around `word`, a placeholder or a word."""
    many = word in ("{times}", "{part}")
    return [
        (f"{{other}} {{H}} {{x}} {word} {{units}} than {{name}}{{D}}.", {"H": _HOLD, "D": _DOES})
        if not many
        else (f"{{other}} {{H}} {word} as many {{units}} as {{name}}{{D}}.", {"H": _HOLD, "D": _DOES}),
        (
            f"{{other}} {{H}} {{x}} {{units}} {'more' if word == 'more' else 'less'} than {{name}}{{D}}.",
            {"H": _HOLD, "D": _DOES},
        )
        if not many
        else (
            f"{{other}} {{H}} {word} the number of {{units}} that {{name}} {{H2}}.",
            {"H": _HOLD, "H2": _HOLD},
        ),
        (
            f"{{other}}'s {{S}} has {{x}} {word} {{units}} than {{name}}'s{{D}}.",
            {"S": ["pile", "box", "bag", "shelf"], "D": _DOES},
        )
        if not many
        else (
            f"{{other}}'s {{S}} holds {word} as many {{units}} as {{name}}'s{{D}}.",
            {"S": ["pile", "box", "bag", "shelf"], "D": _DOES},
        ),
        (f"{{C}} {{name}}, {{other}} {{H}} {{x}} {word} {{units}}.", {"C": _COMPARE, "H": _HOLD})
        if not many
        else (f"{{C}} {{name}}, {{other}} {{H}} {word} as many {{units}}.", {"C": _COMPARE, "H": _HOLD}),
    ]


# Templates per operation: each upper-case slot takes one of its phrasings, and every combination of phrasings
# is one frame. Run-time placeholders (lower case): {name} (the person acting or holding), {other} (a second
# person, introduced by a comparison), {x} (the number), {k} / {times} / {part} (a small factor), {units},
# {one} (singular), {cont} (a container), {cont_one}, {r} and {d} (a rate: r per day for d days, or d containers
# of r), {y} and {other_units} (distractors). `start` frames open a problem; `more`, `fewer`, `times` and `part`
# compare a new person with the current one and move the story to them.
GRAMMAR: dict[str, list[tuple[str, dict[str, list[str]]]]] = {
    "start": [
        (
            "{O}{name} {V} {x} {units}{T}.",
            {
                "O": _OPEN_START,
                "V": _HOLD + ["counts", "possesses"],
                "T": ["", " in a drawer", " on a shelf", " in a bag", " at home"],
            },
        ),
        (
            "{O}{x} {units} {V} {name}{T}.",
            {
                "O": _OPEN_START,
                "V": ["belong to", "are kept by", "are owned by", "are held by"],
                "T": ["", " at home", " in a bag"],
            },
        ),
        (
            "{O}{name} {V} {units} and {H} {x} {S}.",
            {
                "O": _OPEN_START,
                "V": ["collects", "saves", "gathers"],
                "H": _HOLD[:3],
                "S": ["so far", "by now", "already"],
            },
        ),
        (
            "{O}there are {x} {units} in {name}'s {P}.",
            {"O": _OPEN_START, "P": ["room", "bag", "desk", "garage"]},
        ),
    ],
    "rate": [
        (
            "{O}{name} {V} {r} {units} {P} {U} for {d} {U}s.",
            {
                "O": _OPEN,
                "V": ["picks", "makes", "gets", "earns", "collects", "gathers", "receives"],
                "P": ["every", "each", "per", "a"],
                "U": ["day", "week"],
            },
        ),
        (
            "{O}for {d} {U}s, {name} {V} {r} {units} {P} {U}.",
            {
                "O": ["", "Then, ", "After that, "],
                "V": ["picks", "makes", "gets", "earns", "collects", "gathers", "receives"],
                "P": ["every", "each", "per", "a"],
                "U": ["day", "week"],
            },
        ),
        (
            "{O}every {U} for {d} {U}s, {r} {units} are {V} {name}.",
            {
                "O": ["", "Then, ", "After that, "],
                "U": ["day", "week"],
                "V": ["given to", "sent to", "handed to", "brought to"],
            },
        ),
        (
            "{O}{name} {V} {d} {cont}{W}.",
            {
                "O": _OPEN,
                "V": ["buys", "orders", "gets", "opens", "unpacks", "finds"],
                "W": [
                    " with {r} {units} in each",
                    " of {r} {units} each",
                    " holding {r} {units} apiece",
                    ", and each {cont_one} holds {r} {units}",
                    " with {r} {units} per {cont_one}",
                ],
            },
        ),
        (
            "{O}there are {d} {cont} in {name}'s {P}, each with {r} {units}.",
            {"O": _OPEN, "P": ["closet", "room", "garage", "kitchen"]},
        ),
    ],
    "add": [
        (
            "{O}{name} {V} {x} {M} {units}{T}.",
            {
                "O": _OPEN,
                "V": ["buys", "finds", "wins", "gets", "receives", "collects", "picks up", "earns"],
                "M": ["more", "extra", "additional", "new"],
                "T": ["", " at the market", " from a friend", " at school", " in a game"],
            },
        ),
        (
            "{O}{x} {M} {units} are {V} {name}{T}.",
            {
                "O": _OPEN,
                "M": ["more", "extra", "new"],
                "V": ["given to", "handed to", "sent to", "brought to", "passed to"],
                "T": ["", " by a neighbour", " by a teacher", " by an aunt"],
            },
        ),
        (
            "{O}{name}'s {S} of {units} {V} by {x}.",
            {"O": _OPEN, "S": _STOCK, "V": ["goes up", "grows", "rises", "increases"]},
        ),
        (
            "{O}{G} gives {name} {x} {M} {units}.",
            {
                "O": _OPEN,
                "G": ["a neighbour", "a teacher", "an aunt", "a friend", "{name}'s uncle"],
                "M": ["more", "extra", "new"],
            },
        ),
    ],
    "sub": [
        (
            "{O}{name} {V} {x} {units}{T}.",
            {
                "O": _OPEN,
                "V": [
                    "gives away",
                    "sells",
                    "loses",
                    "uses",
                    "donates",
                    "spends",
                    "throws away",
                    "hands out",
                ],
                "T": ["", " at the market", " on the way home", " for a project", " in a game"],
            },
        ),
        (
            "{O}{x} of {name}'s {units} are {V}{T}.",
            {
                "O": _OPEN,
                "V": ["taken", "lost", "sold", "broken", "eaten", "borrowed"],
                "T": ["", " by a cousin", " by a friend", " during a trip"],
            },
        ),
        (
            "{O}{name}'s {S} of {units} {V} by {x}.",
            {"O": _OPEN, "S": _STOCK, "V": ["goes down", "drops", "falls", "shrinks"]},
        ),
        (
            "{O}{name} gives {x} {units} to {G}.",
            {"O": _OPEN, "G": ["a friend", "a cousin", "a neighbour", "the library", "a classmate"]},
        ),
    ],
    "mul": [
        (
            "{O}{name} {H} {times} as many {units} as {B}.",
            {"O": _OPEN, "H": _HOLD, "B": ["before", "at the start", "a moment ago", "last week"]},
        ),
        (
            "{O}{name} {V} each {one} for {k} new {units}.",
            {"O": _OPEN, "V": ["trades", "swaps", "exchanges"]},
        ),
        (
            "{O}the {S} of {units} {name} {H} is multiplied by {k}.",
            {"O": _OPEN, "S": ["number", "pile", "stock", "amount"], "H": _HOLD},
        ),
        (
            "{O}{name}'s {S} of {units} {V} to {times} its size.",
            {"O": _OPEN, "S": _STOCK, "V": ["grows", "rises", "jumps", "climbs"]},
        ),
        ("{O}{name} {V} each {one} into {k} {units}.", {"O": _OPEN, "V": ["turns", "changes", "makes"]}),
    ],
    "div": [
        (
            "{O}{name} {V} only {part} of the {units}{R}.",
            {
                "O": _OPEN,
                "V": ["keeps", "holds on to", "saves"],
                "R": ["", " and gives the rest away", " and sells the rest", " and donates the rest"],
            },
        ),
        (
            "{O}{name} {V} the {units} {E} into {k} {cont} and keeps one {cont_one}.",
            {"O": _OPEN, "V": ["splits", "divides", "packs", "sorts"], "E": _EVENLY},
        ),
        (
            "{O}{name} {V} the {units} {E} among {k} people, {name} included, and keeps one share.",
            {"O": _OPEN, "V": ["shares", "splits", "divides"], "E": _EVENLY},
        ),
        (
            "{O}{name} keeps one of every {k} {units} and {V} the others.",
            {"O": _OPEN, "V": ["gives away", "sells", "donates", "throws away"]},
        ),
        (
            "{O}only {part} of {name}'s {units} {V}; the rest are {W}.",
            {"O": _OPEN, "V": ["are kept", "stay", "remain"], "W": ["sold", "given away", "lost"]},
        ),
    ],
    "more": _compare("more"),
    "fewer": _compare("fewer"),
    "times": _compare("{times}"),
    "part": _compare("{part}"),
    "question": [
        ("How many {units} does {name} {H}{E}?", {"H": _HOLD_BARE, "E": _WHEN}),
        ("What is the number of {units} {name} {H}{E}?", {"H": _HOLD, "E": _WHEN}),
        ("{F} how many {units} {name} {H}{E}.", {"F": ["Find", "Work out", "Tell"], "H": _HOLD, "E": _WHEN}),
    ],
    "distractor": [
        (
            "{name}{P} {V}.",
            {
                "P": ["", "'s sister", "'s friend"],
                "V": [
                    "is {y} years old",
                    "lives {y} kilometres from town",
                    "has {y} cousins",
                    "read {y} books last year",
                ],
            },
        ),
        (
            "{name} also {H} {y} {other_units}, which {M}.",
            {"H": _HOLD[:3], "M": ["do not matter here", "play no part here", "are not counted"]},
        ),
        (
            "The {P} nearby {V} {y} years ago.",
            {"P": ["shop", "park", "school", "library"], "V": ["opened", "was built", "was painted"]},
        ),
    ],
}

HELD_OUT_EVERY = 4
"""One combination of phrasings in HELD_OUT_EVERY goes to family B (the held-out frames)."""


def _expand(template: str, slots: dict[str, list[str]]) -> dict[str, list[str]]:
    """Every frame of one template, by family: a combination whose phrasing indices sum to
    HELD_OUT_EVERY - 1 modulo HELD_OUT_EVERY is held out (B). With two or more slots of two or more phrasings,
    every phrasing is in both families, each time beside different phrasings: B is new combinations of parts A
    has taught, not new words."""
    out: dict[str, list[str]] = {"A": [], "B": []}
    keys = list(slots)
    for idx in itertools.product(*(range(len(slots[k])) for k in keys)):
        text = template
        for key, i in zip(keys, idx):
            text = text.replace("{" + key + "}", slots[key][i])
        out["B" if sum(idx) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else "A"].append(text)
    return out


def _frames() -> tuple[dict[str, dict[str, list[list[str]]]], dict[str, dict[str, list[str]]]]:
    by_template: dict[str, dict[str, list[list[str]]]] = {"A": {}, "B": {}}
    for group, templates in GRAMMAR.items():
        for template, slots in templates:
            for family, frames in _expand(template, slots).items():
                by_template[family].setdefault(group, []).append(frames)
    flat = {
        f: {g: [t for ts in groups for t in ts] for g, groups in fam.items()}
        for f, fam in by_template.items()
    }
    return by_template, flat


FRAMES_BY_TEMPLATE, FRAMES = _frames()
"""FRAMES[family][group]: every frame of that family (B: the held-out combinations), for inspection and tests;
FRAMES_BY_TEMPLATE[family][group]: the same frames grouped by template (a problem draws a template, then a frame)."""

COMPARISON_KIND = {"more": "add", "fewer": "sub", "times": "mul", "part": "div"}
"""The operation each comparison group (`more`, `fewer`, `times`, `part`) applies to the value in focus."""
