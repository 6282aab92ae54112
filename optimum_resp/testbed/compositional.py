"""Problem generator v2: compositional wording, so a model must read a problem, not match a template.

Every operation is said in many sentence frames (who acts, active and passive voice, rates and "each /
per", comparisons "3 more than", "twice as many as", "half as many as"), small numbers are sometimes words,
distractor sentences carry numbers that do not matter, two or three people take part, and the question
is asked in several ways. Frames are built from templates whose slots each take one of a few phrasings
(`GRAMMAR`); one combination of phrasings in four is held out. `train` and `test` use family A,
`held_out_frames` uses family B (sentences and names never seen in training, made of phrasings training has
taught in other combinations: a model trained from scratch cannot learn the meaning of a word it never saw,
but it can learn to read a sentence it has never seen), and `hard` is family A with more steps. Seeded and
reproducible; the GSM8K and MathQA files are written from the same problems.

The solution trace quotes each sentence (`> ...`) and follows it with the arithmetic it implies; distractor
sentences are quoted with no arithmetic. The records (`Problem`, `Step`) and their GSM8K / MathQA forms live in
`problems`.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from .problems import CONTAINERS, ITEMS, OP_SYMBOL, Problem, Step, mathqa_options

logger = logging.getLogger(__name__)

__all__ = [
    "FRAMES",
    "GRAMMAR",
    "SPLITS_V2",
    "SplitSpec",
    "generate_split_v2",
    "generate_splits_v2",
    "make_problem_v2",
    "made_up_name",
    "write_testbed_v2",
]

MAX_VALUE = 200
"""Cap on every intermediate value; answers stay below 10000."""

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


def _person(rng: random.Random, family: str) -> str:
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


_BY_TEMPLATE, FRAMES = _frames()
"""FRAMES[family][group]: every frame of that family (B: the held-out combinations), for inspection and tests."""
# Operation kind of each frame group: what it does to the value in focus.
_KIND = {"more": "add", "fewer": "sub", "times": "mul", "part": "div"}


@dataclass(frozen=True)
class SplitSpec:
    """What one split draws from: its frame and name family, step range, and seed offset."""

    family: str
    min_steps: int
    max_steps: int
    seed_offset: int


SPLITS_V2: dict[str, SplitSpec] = {
    "train": SplitSpec("A", 2, 5, 0),
    "test": SplitSpec("A", 2, 5, 1_000_003),
    "held_out_frames": SplitSpec("B", 2, 5, 3_000_017),
    "hard": SplitSpec("A", 6, 8, 2_000_029),
}


def _number(rng: random.Random, value: int) -> str:
    """Digits, or the word for small values a third of the time."""
    return NUMBER_WORDS[value] if value <= 12 and rng.random() < 1 / 3 else str(value)


class _Story:
    """The sentences, steps and gold lines of one problem, with the person in focus and their value."""

    def __init__(self, rng: random.Random, family: str) -> None:
        self.rng, self.family = rng, family
        self.names: list[str] = []  # two or three people: the first, and up to two compared
        while len(self.names) < 3:
            name = _person(rng, family)
            self.names += [name] if name not in self.names else []
        self.focus = self.names.pop()
        (self.one, self.units), (_, self.other_units) = rng.sample(ITEMS, 2)
        self.sentences: list[tuple[str, list[Step]]] = []  # in the order of the computation
        self.compared_at: set[int] = set()  # sentences that introduce a person by comparison
        self.gold: list[str] = []
        self.steps: list[Step] = []

    def frame(self, group: str, **values) -> str:
        text = self.rng.choice(
            self.rng.choice(_BY_TEMPLATE[self.family][group])
        )  # a template, then a phrasing
        cont = self.rng.choice(CONTAINERS)
        fill = {"name": self.focus, "units": self.units, "one": self.one, "other_units": self.other_units}
        fill.update(cont=cont, cont_one=cont[:-2] if cont.endswith("xes") else cont[:-1])
        fill.update(values)
        sentence = text.format(**fill)
        return sentence[0].upper() + sentence[1:]

    def say(self, sentence: str, steps: list[Step]) -> None:
        self.sentences.append((sentence, steps))

    def step(self, a: int, op: str, b: int) -> Step:
        result = {"add": a + b, "sub": a - b, "mul": a * b, "div": a // b if b else 0}[op]
        step = Step(a, op, b, result)
        self.steps.append(step)
        symbol = OP_SYMBOL[op]
        self.gold.append(f"{self.focus} has {a}{symbol}{b}=<<{a}{symbol}{b}={result}>>{result}.")
        return step


def _factor(rng: random.Random, value: int, op: str) -> int | None:
    """A factor 2-5 that keeps mul under MAX_VALUE or div exact (quotient >= 2); None when there is none."""
    if op == "mul":
        ks = [k for k in TIMES if value * k <= MAX_VALUE]
    else:
        ks = [k for k in PART if value % k == 0 and value // k >= 2]
    return rng.choice(ks) if ks else None


def _grow(rng: random.Random, story: _Story, value: int, steps_left: int) -> tuple[int, int]:
    """One sentence that applies an operation to the value in focus; returns (new value, steps used)."""
    ops = ["add", "sub", "mul", "div", "more", "fewer", "times", "part"]
    if steps_left >= 2 and value + 4 <= MAX_VALUE:
        ops.append("pack")
    for op in rng.sample(ops, len(ops)):
        kind = _KIND.get(op, op)
        if op == "pack":  # a containers with per each, added: two steps
            a = rng.randint(2, 6)
            per = rng.randint(2, max(2, min(12, (MAX_VALUE - value) // a)))
            if value + a * per > MAX_VALUE:
                continue
            product = story.step(a, "mul", per)
            total = story.step(value, "add", product.result)
            story.say(story.frame("rate", d=_number(rng, a), r=_number(rng, per)), [product, total])
            return total.result, 2
        if kind == "add":
            if value > MAX_VALUE - 2:
                continue
            x = rng.randint(2, min(60, MAX_VALUE - value))
        elif kind == "sub":
            if value < 4:
                continue
            x = rng.randint(1, min(60, value - 2))
        else:
            x = _factor(rng, value, kind)
            if x is None:
                continue
        compare = op in _KIND
        other = story.names.pop() if compare and story.names else None
        if compare and other is None:
            continue
        words = {"x": _number(rng, x), "k": _number(rng, x)}
        if kind == "mul":
            words["times"] = TIMES[x]
        if kind == "div":
            words["part"] = PART[x]
        if compare:  # said of the current person, computed for the new one, who holds the story from here
            sentence = story.frame(op, other=other, **words)
            story.focus = other
            step = story.step(value, kind, x)
            story.compared_at.add(len(story.sentences))
        else:
            step = story.step(value, kind, x)
            sentence = story.frame(kind, **words)
        story.say(sentence, [step])
        return step.result, 1
    raise ValueError(f"no operation applies to {value}")


def make_problem_v2(rng: random.Random, num_steps: int, family: str = "A") -> Problem:
    """One problem with exactly `num_steps` arithmetic steps, worded from frame family `family` ("A" or "B")."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1; got {num_steps!r}.")
    if family not in FRAMES:
        raise ValueError(f"family must be one of {sorted(FRAMES)}; got {family!r}.")
    for _ in range(100):
        story = _Story(rng, family)
        try:
            if num_steps >= 2 and rng.random() < 0.3:  # a rate opens the problem: one step
                r, d = rng.randint(2, 20), rng.randint(2, 9)
                if r * d > MAX_VALUE:
                    continue
                step = story.step(r, "mul", d)
                story.say(story.frame("rate", r=_number(rng, r), d=_number(rng, d)), [step])
                value, left = step.result, num_steps - 1
            else:
                value, left = rng.randint(5, 60), num_steps
                story.say(story.frame("start", x=_number(rng, value)), [])
            while left > 0:
                value, used = _grow(rng, story, value, left)
                left -= used
        except ValueError:
            continue
        if left < 0 or not 0 < value < 10000:
            continue
        order = list(range(len(story.sentences)))  # the order the question states them in
        swapped = 1 in story.compared_at and rng.random() < 0.3
        if swapped:  # "B has 3 more than A. A has 10.": facts out of order
            order[0], order[1] = 1, 0
        holder = story.focus
        for _ in range(rng.choice([0, 0, 1, 1, 2])):  # distractors, anywhere after the opening sentence
            story.focus = _person(rng, family)
            story.sentences.append((story.frame("distractor", y=rng.randint(2, 90)), []))
            at = rng.randint(1, len(order))
            order.insert(at, len(story.sentences) - 1)
        story.focus = holder
        question = story.frame("question")
        # The trace quotes the sentences in the question's order, except that facts stated out of order are
        # quoted in the order the arithmetic needs them.
        trace = list(order)
        if swapped:
            a, b = trace.index(0), trace.index(1)
            trace[a], trace[b] = trace[b], trace[a]
        think = "\n".join(
            f"> {s} " + " ".join(f"{st.expr()} = {st.result}." for st in steps) if steps else f"> {s}"
            for s, steps in (story.sentences[i] for i in trace)
        )
        options, correct = mathqa_options(rng, value, story.steps)
        return Problem(
            question=" ".join([story.sentences[i][0] for i in order] + [question]),
            solution=f"<think>\n{think}\nSo the answer is {value}.\n</think>\n\nThe answer is \\boxed{{{value}}}.",
            gold="\n".join(story.gold + [f"#### {value}"]),
            answer=value,
            num_steps=num_steps,
            steps=story.steps,
            family=family,
            options=options,
            correct=correct,
            rationale='"'
            + " ".join(f"{s.expr()} = {s.result} ." for s in story.steps)
            + f' answer : {correct}"',
        )
    raise RuntimeError(f"could not make a {num_steps}-step problem")


def generate_split_v2(
    split: str,
    n: int,
    seed: int = 0,
    exclude: set[str] | None = None,
    *,
    steps: tuple[int, int] | None = None,
) -> list[Problem]:
    """`n` distinct problems of `split` (see SPLITS_V2), reproducibly from `seed`, none of them in `exclude`."""
    if split not in SPLITS_V2:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS_V2)}.")
    spec = SPLITS_V2[split]
    low, high = steps or (spec.min_steps, spec.max_steps)
    if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
        raise ValueError(f"steps must be two integers 1 <= low <= high; got {(low, high)!r}.")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0; got {n!r}.")
    rng = random.Random(seed + spec.seed_offset)
    seen, out, misses = set(exclude or ()), [], 0
    while len(out) < n:
        problem = make_problem_v2(rng, rng.randint(low, high), spec.family)
        if problem.question in seen:
            misses += 1
            if misses > 1000 + 10 * n:  # the space is (nearly) used up
                raise ValueError(
                    f"asked for {n} distinct {split} problems with {low}-{high} steps, but only {len(out)} could "
                    "be made: ask for fewer, or allow more steps."
                )
            continue
        seen.add(problem.question)
        out.append(problem)
    return out


def generate_splits_v2(sizes: dict[str, int], seed: int = 0) -> dict[str, list[Problem]]:
    """Several splits at once; evaluation splits are made first and `train` excludes every one of their questions."""
    unknown = set(sizes) - set(SPLITS_V2)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; expected some of {list(SPLITS_V2)}.")
    held: set[str] = set()
    out: dict[str, list[Problem]] = {}
    for split in sorted(sizes, key=lambda s: s == "train"):
        out[split] = generate_split_v2(split, sizes[split], seed=seed, exclude=held)
        held |= {p.question for p in out[split]}
    return out


def write_testbed_v2(out_dir: str | Path, sizes: dict[str, int], seed: int = 0) -> dict[str, Path]:
    """Write `gsm8k_<split>.jsonl` and `mathqa_<split>.jsonl` for every split in `sizes` (see `generate_splits_v2`)."""
    splits = generate_splits_v2(sizes, seed=seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for split, problems in splits.items():
        for task, rows in (
            ("gsm8k", [p.to_gsm8k() for p in problems]),
            ("mathqa", [p.to_mathqa() for p in problems]),
        ):
            path = out_dir / f"{task}_{split}.jsonl"
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
            paths[f"{task}_{split}"] = path
        logger.info("wrote %d %s problems to %s", len(problems), split, out_dir)
    return paths
