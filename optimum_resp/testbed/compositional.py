"""Problem generator v2: compositional wording, so a model must read a problem, not match a template.

Every operation is said in many sentence frames (who acts, active and passive voice, rates and "each /
per", comparisons "3 more than", "twice as many as", "half as many as"), small numbers are sometimes words,
distractor sentences carry numbers that do not matter, two or three people take part, and the question
is asked in several ways. The frames and names come in two disjoint families: `train` and `test` use
family A, `held_out_frames` uses family B (frames and names never seen in training, same operations, same
number ranges), and `hard` is family A with more steps. Seeded and reproducible; the GSM8K and MathQA
files are written from the same problems.

The solution trace quotes each sentence (`> ...`) and follows it with the arithmetic it implies, as the
v1 generator's traces do; distractor sentences are quoted with no arithmetic.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from .problems import CONTAINERS, ITEMS, OP_SYMBOL, Problem, Step, _mathqa_options

logger = logging.getLogger(__name__)

__all__ = [
    "FRAMES",
    "SPLITS_V2",
    "SplitSpec",
    "generate_split_v2",
    "generate_splits_v2",
    "make_problem_v2",
    "write_testbed_v2",
]

MAX_VALUE = 200
"""Cap on every intermediate value; answers stay below 10000."""

NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()
TIMES = {2: "twice", 3: "three times", 4: "four times", 5: "five times"}
PART = {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth"}

NAMES = {
    "A": ["Mia", "Liam", "Emma", "Noah", "Olivia", "Lucas", "Sofia", "Ethan", "Zoe", "Omar", "Lena", "Ivan"]
    + ["Priya", "Kenji", "Maya", "Leo", "Nora", "Ben", "Chloe", "Sam"],
    "B": [
        "Tara",
        "Hugo",
        "Ines",
        "Ravi",
        "Yuki",
        "Elena",
        "Jack",
        "Aisha",
        "Diego",
        "Grace",
        "Felix",
        "Amara",
    ]
    + ["Bruno", "Clara", "Dmitri", "Esme", "Farid", "Greta", "Hiro", "Ada"],
}

# Frames per family and operation. Placeholders: {name} (the person acting or holding), {other} (a second
# person, introduced by a comparison), {x} (the number), {k} / {times} / {part} (a small factor), {units},
# {one} (singular), {cont} (a container), {a} and {per} (packs: a containers with per each), {r} and {d}
# (a rate: r per day for d days). `start` frames open a problem; `more`, `fewer`, `times` and `part` compare
# a new person with the current one and move the story to them.
FRAMES: dict[str, dict[str, list[str]]] = {
    "A": {
        "start": [
            "{name} has {x} {units}.",
            "{name} starts the day with {x} {units}.",
            "There are {x} {units} in {name}'s room.",
            "{name} owns {x} {units}.",
            "At first, {name} keeps {x} {units} in a drawer.",
            "{name} counts {x} {units} on the table.",
            "A friend gave {name} {x} {units} last week, and {name} still has all of them.",
            "{name} collects {units} and has {x} so far.",
        ],
        "rate": [
            "{name} picks {r} {units} every day for {d} days.",
            "For {d} days, {name} makes {r} {units} per day.",
            "{name} gets {r} {units} each day, {d} days in a row.",
            "Every day for {d} days, {r} {units} are given to {name}.",
            "{name} earns {r} {units} a day and does this for {d} days.",
            "{name} buys {d} {cont} of {units} with {r} {units} in each.",
            "{name} has {d} {cont}, and each of them holds {r} {units}.",
            "There are {d} {cont} in {name}'s closet with {r} {units} per {cont_one}.",
        ],
        "add": [
            "{name} buys {x} more {units}.",
            "Later, {name} finds another {x} {units}.",
            "Then {x} more {units} are added to {name}'s pile.",
            "{name}'s aunt gives {name} {x} {units}.",
            "{name} receives {x} {units} as a gift.",
            "{x} {units} are handed to {name} by a neighbour.",
            "Then {name} wins {x} {units} in a game.",
            "{name} gets {x} extra {units} from school.",
        ],
        "sub": [
            "{name} gives away {x} {units}.",
            "Then {name} gives {x} {units} to a friend.",
            "Sadly, {x} of the {units} get lost.",
            "{name} sells {x} {units} at the market.",
            "{x} of {name}'s {units} are taken by a cousin.",
            "{name} uses {x} {units} for a project.",
            "Then {name} loses {x} {units} on the way home.",
            "{name} donates {x} {units} to the library.",
        ],
        "mul": [
            "Then the number of {units} {name} has becomes {times} as large.",
            "After a good week, {name} has {times} as many {units} as before.",
            "{name} multiplies the {units} by {k}.",
            "By the end of the month, {name}'s {units} have grown to {times} their number.",
            "{name} trades each {one} for {k} new {units}.",
            "Every {one} {name} has is swapped for {k} {units}.",
            "The {units} {name} owns are copied until there are {times} as many.",
            "Each of {name}'s {units} is replaced by {k} of them.",
        ],
        "div": [
            "{name} splits the {units} equally into {k} {cont} and keeps only one of them.",
            "{name} shares the {units} equally among {k} people, {name} included, and keeps one share.",
            "Then {name} keeps only {part} of the {units}.",
            "{name} gives away all but {part} of the {units}.",
            "The {units} are put into {k} equal groups, and {name} keeps one group.",
            "{name} divides the {units} evenly among {k} {cont} and takes one {cont_one} home.",
            "Only {part} of {name}'s {units} are kept; the rest are sold.",
            "{name} keeps one of every {k} {units} and gives the others away.",
        ],
        "more": [
            "{other} has {x} more {units} than {name}.",
            "{other} owns {x} {units} more than {name} does.",
            "{other}'s pile has {x} more {units} than {name}'s.",
        ],
        "fewer": [
            "{other} has {x} fewer {units} than {name}.",
            "{other} owns {x} {units} less than {name} does.",
            "{other}'s pile has {x} fewer {units} than {name}'s.",
        ],
        "times": [
            "{other} has {times} as many {units} as {name}.",
            "{other} owns {times} the number of {units} that {name} has.",
        ],
        "part": [
            "{other} has {part} as many {units} as {name}.",
            "{other} owns {part} of the number of {units} {name} has.",
        ],
        "question": [
            "How many {units} does {name} have now?",
            "How many {units} does {name} end up with?",
            "How many {units} are left with {name} at the end?",
            "What is the number of {units} {name} has in the end?",
            "Find how many {units} {name} has now.",
        ],
        "distractor": [
            "{name} is {y} years old.",
            "{name}'s school is {y} minutes away by bus.",
            "The shop nearby opened {y} years ago.",
            "{name} also has {y} {other_units}, which do not matter here.",
            "It rains on {y} days that month.",
        ],
    },
    "B": {
        "start": [
            "To begin with, {name} holds {x} {units}.",
            "{x} {units} belong to {name}.",
            "{name}'s shelf carries {x} {units}.",
            "In {name}'s bag there are {x} {units}.",
            "{name} was given {x} {units} for a birthday.",
            "The count of {name}'s {units} stands at {x}.",
            "{name} is the proud keeper of {x} {units}.",
            "On Monday morning, {name} possesses {x} {units}.",
        ],
        "rate": [
            "Over {d} weeks, {name} gathers {r} {units} weekly.",
            "{r} {units} reach {name} each week for {d} weeks.",
            "{name} orders {d} {cont} holding {r} {units} apiece.",
            "{name} is sent {d} {cont}; every {cont_one} contains {r} {units}.",
            "Across {d} weeks {name} produces {r} {units} a week.",
            "With {r} {units} per week, {name} works for {d} weeks.",
            "{name} unpacks {d} {cont}, {r} {units} to each {cont_one}.",
            "Each of {d} weeks brings {name} {r} {units}.",
        ],
        "add": [
            "Next, {name} picks up {x} additional {units}.",
            "A parcel with {x} {units} arrives for {name}.",
            "{name} is gifted {x} more {units} by a teacher.",
            "{name}'s stock of {units} goes up by {x}.",
            "On the next day {name} purchases {x} {units}.",
            "{name} adds {x} {units} to the collection.",
            "{x} further {units} land in {name}'s hands.",
            "A classmate hands over {x} {units} to {name}.",
        ],
        "sub": [
            "Next, {name} hands out {x} {units}.",
            "{x} {units} disappear from {name}'s shelf.",
            "{name}'s stock of {units} drops by {x}.",
            "{name} throws away {x} broken {units}.",
            "A thief steals {x} of {name}'s {units}.",
            "{name} parts with {x} {units}.",
            "{x} {units} are borrowed from {name} and never returned.",
            "{name} spends {x} {units} on a trade.",
        ],
        "mul": [
            "{name}'s collection of {units} grows to {times} its size.",
            "The amount of {units} {name} keeps is multiplied by {k}.",
            "Soon {name} owns {times} as many {units} as a moment ago.",
            "For every {one} {name} holds, {k} more appear in its place.",
            "{name} ends the week with {times} the {units} held at its start.",
            "The stock of {units} in {name}'s hands rises {k}-fold.",
            "{name} turns each {one} into {k} {units}.",
            "The pile of {units} {name} keeps becomes {times} bigger.",
        ],
        "div": [
            "{name} keeps just {part} of the {units} and gives up the rest.",
            "{name} splits the {units} into {k} equal heaps and holds on to one heap.",
            "Only one of {k} equal portions of the {units} stays with {name}.",
            "{name} packs the {units} evenly into {k} {cont}, keeping one {cont_one}.",
            "After sharing fairly with {k} people in all, {name} has one share of the {units} left.",
            "The {units} {name} has shrink to {part} of what they were.",
            "{name} holds on to {part} of the {units}.",
            "Out of every {k} {units}, {name} keeps one.",
        ],
        "more": [
            "{other} holds {x} {units} beyond what {name} holds.",
            "Compared with {name}, {other} has an extra {x} {units}.",
            "{other}'s {units} outnumber {name}'s by {x}.",
        ],
        "fewer": [
            "{other} holds {x} {units} short of what {name} holds.",
            "Compared with {name}, {other} has {x} {units} less.",
            "{name}'s {units} outnumber {other}'s by {x}.",
        ],
        "times": [
            "{other}'s {units} number {times} those of {name}.",
            "{other} keeps {times} as many {units} as {name} keeps.",
        ],
        "part": [
            "{other}'s {units} come to {part} of {name}'s.",
            "{other} keeps {part} as many {units} as {name} keeps.",
        ],
        "question": [
            "What is {name}'s final count of {units}?",
            "In the end, how many {units} does {name} hold?",
            "Work out the number of {units} {name} has at the finish.",
            "How many {units} remain in {name}'s hands?",
            "Tell how many {units} {name} owns after all of this.",
        ],
        "distractor": [
            "{name} lives {y} kilometres from town.",
            "{name}'s sister turns {y} next spring.",
            "The park has {y} benches.",
            "Besides, {name} keeps {y} {other_units}, which play no part here.",
            "The trip takes {y} hours.",
        ],
    },
}
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
        self.names = rng.sample(NAMES[family], 3)  # two or three people: the first, and up to two compared
        self.focus = self.names.pop()
        (self.one, self.units), (_, self.other_units) = rng.sample(ITEMS, 2)
        self.sentences: list[tuple[str, list[Step]]] = []  # in the order of the computation
        self.compared_at: set[int] = set()  # sentences that introduce a person by comparison
        self.gold: list[str] = []
        self.steps: list[Step] = []

    def frame(self, group: str, **values) -> str:
        text = self.rng.choice(FRAMES[self.family][group])
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
            story.focus = rng.choice(NAMES[family])
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
        options, correct = _mathqa_options(rng, value, story.steps)
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
