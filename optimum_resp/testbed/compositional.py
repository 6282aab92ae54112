"""The testbed's problem generator: compositional wording, so a model must read a problem, not match a template.

A problem is a chain of arithmetic steps, each said in a sentence drawn from the grammar (`grammar`: many frames
per operation, one combination of phrasings in four held out); small numbers are sometimes words, distractor
sentences carry numbers that do not matter, two or three people take part, and the question is asked in several
ways. `train` and `test` use family A, `held_out_frames` uses family B (sentences and names never seen in
training, made of phrasings training has taught in other combinations: a model trained from scratch cannot learn
the meaning of a word it never saw, but it can learn to read a sentence it has never seen), and `hard` is family A
with more steps. Seeded and reproducible; the GSM8K and MathQA files are written from the same problems.

The solution trace quotes each sentence (`> ...`) and follows it with the arithmetic it implies; distractor
sentences are quoted with no arithmetic. The records (`Problem`, `Step`) and their GSM8K / MathQA forms live in
`problems`.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from .grammar import COMPARISON_KIND, FRAMES, FRAMES_BY_TEMPLATE, NUMBER_WORDS, PART, TIMES, person
from .problems import CONTAINERS, ITEMS, OP_SYMBOL, Problem, Step, mathqa_options

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_VALUE",
    "SPLIT_SPECS",
    "SplitSpec",
    "generate_split",
    "generate_splits",
    "make_problem",
    "write_testbed",
]

MAX_VALUE = 200
"""Cap on every intermediate value; answers stay below 10000."""


@dataclass(frozen=True)
class SplitSpec:
    """What one split draws from: its frame and name family, step range, and seed offset."""

    family: str
    min_steps: int
    max_steps: int
    seed_offset: int


SPLIT_SPECS: dict[str, SplitSpec] = {
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
            name = person(rng, family)
            self.names += [name] if name not in self.names else []
        self.focus = self.names.pop()
        (self.one, self.units), (_, self.other_units) = rng.sample(ITEMS, 2)
        self.sentences: list[tuple[str, list[Step]]] = []  # in the order of the computation
        self.compared_at: set[int] = set()  # sentences that introduce a person by comparison
        self.gold: list[str] = []
        self.steps: list[Step] = []

    def frame(self, group: str, **values) -> str:
        text = self.rng.choice(
            self.rng.choice(FRAMES_BY_TEMPLATE[self.family][group])
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
        kind = COMPARISON_KIND.get(op, op)
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
        compare = op in COMPARISON_KIND
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


def make_problem(rng: random.Random, num_steps: int, family: str = "A") -> Problem:
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
            story.focus = person(rng, family)
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


def generate_split(
    split: str,
    n: int,
    seed: int = 0,
    exclude: set[str] | None = None,
    *,
    steps: tuple[int, int] | None = None,
) -> list[Problem]:
    """`n` distinct problems of `split` (see SPLIT_SPECS), reproducibly from `seed`, none of them in `exclude`."""
    if split not in SPLIT_SPECS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_SPECS)}.")
    spec = SPLIT_SPECS[split]
    low, high = steps or (spec.min_steps, spec.max_steps)
    if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
        raise ValueError(f"steps must be two integers 1 <= low <= high; got {(low, high)!r}.")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0; got {n!r}.")
    rng = random.Random(seed + spec.seed_offset)
    seen, out, misses = set(exclude or ()), [], 0
    while len(out) < n:
        problem = make_problem(rng, rng.randint(low, high), spec.family)
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


def generate_splits(sizes: dict[str, int], seed: int = 0) -> dict[str, list[Problem]]:
    """Several splits at once; evaluation splits are made first and `train` excludes every one of their questions."""
    unknown = set(sizes) - set(SPLIT_SPECS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; expected some of {list(SPLIT_SPECS)}.")
    held: set[str] = set()
    out: dict[str, list[Problem]] = {}
    for split in sorted(sizes, key=lambda s: s == "train"):
        out[split] = generate_split(split, sizes[split], seed=seed, exclude=held)
        held |= {p.question for p in out[split]}
    return out


def write_testbed(out_dir: str | Path, sizes: dict[str, int], seed: int = 0) -> dict[str, Path]:
    """Write `gsm8k_<split>.jsonl` and `mathqa_<split>.jsonl` for every split in `sizes` (see `generate_splits`)."""
    splits = generate_splits(sizes, seed=seed)
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
