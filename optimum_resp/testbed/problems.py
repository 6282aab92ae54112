"""Seeded generator of synthetic multi-step arithmetic word problems (the testbed task)."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

SPLIT_STEPS: dict[str, tuple[int, int]] = {"train": (2, 5), "test": (2, 5), "hard": (6, 7)}
"""Inclusive range of arithmetic steps per split."""

SPLIT_SEED_OFFSET: dict[str, int] = {"train": 0, "test": 1_000_003, "hard": 2_000_029}

OP_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}

MAX_VALUE = 200
"""Default cap on intermediate values (the final price step may exceed it; answers stay below 10000)."""

REASONING_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
"""GSM8K instruction appended by the evaluation harness (``optimum_resp.evaluation.tasks``)."""

MATHQA_INSTRUCTION = "Please reason step by step, and put the letter of the correct option within \\boxed{}."
"""MathQA instruction appended by the evaluation harness."""

NAMES = [
    "Mia",
    "Liam",
    "Emma",
    "Noah",
    "Olivia",
    "Ava",
    "Lucas",
    "Sofia",
    "Ethan",
    "Zoe",
    "Omar",
    "Lena",
    "Ivan",
    "Priya",
    "Kenji",
    "Maya",
    "Leo",
    "Nora",
    "Ben",
    "Chloe",
    "Sam",
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
]
ITEMS = [
    ("apple", "apples"),
    ("marble", "marbles"),
    ("sticker", "stickers"),
    ("book", "books"),
    ("cookie", "cookies"),
    ("pencil", "pencils"),
    ("stamp", "stamps"),
    ("shell", "shells"),
    ("card", "cards"),
    ("balloon", "balloons"),
    ("candy", "candies"),
    ("flower", "flowers"),
    ("toy car", "toy cars"),
    ("coin", "coins"),
    ("egg", "eggs"),
    ("cupcake", "cupcakes"),
]
PLACES = [
    ("bakery", "cakes"),
    ("factory", "toys"),
    ("farm", "eggs"),
    ("workshop", "chairs"),
    ("print shop", "posters"),
    ("kitchen", "pies"),
    ("mill", "bags of flour"),
    ("studio", "vases"),
]
CONTAINERS = ["boxes", "bags", "baskets", "jars", "crates"]


@dataclass
class Step:
    """One arithmetic step: ``a op b = result``."""

    a: int
    op: str
    b: int
    result: int

    def expr(self) -> str:
        """Return the expression text, e.g. ``3 * 4``."""
        return f"{self.a} {OP_SYMBOL[self.op]} {self.b}"


@dataclass
class Problem:
    """A generated word problem with a model-style and a human-style solution."""

    question: str
    solution: str
    gold: str
    answer: int
    num_steps: int
    steps: list[Step] = field(default_factory=list)
    family: str = ""
    options: str = ""
    correct: str = ""
    rationale: str = ""

    @property
    def think(self) -> str:
        """Return the reasoning text between ``<think>`` and ``</think>``."""
        return self.solution.split("<think>\n", 1)[1].split("\n</think>", 1)[0]

    def to_gsm8k(self) -> dict[str, str]:
        """Return the GSM8K-format record (``question``, ``answer``)."""
        return {"question": self.question, "answer": self.gold}

    def to_mathqa(self) -> dict[str, str]:
        """Return the MathQA-format record (``Problem``, ``options``, ``correct``, ``Rationale``)."""
        return {
            "Problem": self.question,
            "options": self.options,
            "correct": self.correct,
            "Rationale": self.rationale,
        }

    def gsm8k_prompt(self) -> str:
        """Return the user text the evaluation harness builds for GSM8K (question + boxed instruction)."""
        return f"{self.question}\n\n{REASONING_SUFFIX}"

    def mathqa_prompt(self) -> str:
        """Return the user text the evaluation harness builds for MathQA (options one per line)."""
        lines = "\n".join(
            f"{opt.split(' ) ')[0]}) {opt.split(' ) ')[1]}" for opt in self.options.split(" , ")
        )
        return f"{self.question}\n\nOptions:\n{lines}\n\n{MATHQA_INSTRUCTION}"

    def mathqa_solution(self) -> str:
        """Return a model-style solution that ends with the correct option letter.

        After the value, the trace checks the options in order, each written as in the prompt (``a) 23``),
        until the one that matches: a local comparison a small model can learn, unlike recalling which
        letter holds the value.
        """
        think = self.think.rsplit("\n", 1)[0]
        checks = []
        for opt in self.options.split(" , "):
            letter, value = opt.split(" ) ")
            checks.append(f"{letter}) {value} {'yes' if letter == self.correct else 'no'}")
            if letter == self.correct:
                break
        checks_text = "\n".join(checks)
        return (
            f"<think>\n{think}\nSo the value is {self.answer}.\n{checks_text}\nSo it is option {self.correct}.\n"
            f"</think>\n\nThe answer is \\boxed{{{self.correct}}}."
        )

    def to_dict(self) -> dict:
        """Return all fields as a JSON-serialisable dict."""
        return asdict(self)


class _Builder:
    """Accumulates question sentences, gold lines and steps for one problem."""

    def __init__(self, max_value: int = MAX_VALUE) -> None:
        self.max = max_value
        self.q: list[str] = []
        self.q_steps: list[list[Step]] = []  # the steps each question sentence introduces
        self.gold: list[str] = []
        self.steps: list[Step] = []

    def say(self, sentence: str) -> None:
        """Add a question sentence; it owns the steps computed since the previous sentence."""
        done = sum(len(x) for x in self.q_steps)
        self.q.append(sentence)
        self.q_steps.append(self.steps[done:])

    def trace(self) -> list[str]:
        """Model-style think lines: each sentence quoted (``> ``), followed by the arithmetic it implies.

        The ``> `` marker keeps the quoted sentence's first word tokenized as in the question (with its
        leading space), so quoting is a plain token-for-token copy.
        """
        lines = []
        for sentence, steps in zip(self.q, self.q_steps, strict=True):
            calc = " ".join(f"{s.expr()} = {s.result}." for s in steps)
            lines.append(f"> {sentence} {calc}" if calc else f"> {sentence}")
        return lines

    def step(self, a: int, op: str, b: int) -> int:
        if op == "add":
            r = a + b
        elif op == "sub":
            r = a - b
        elif op == "mul":
            r = a * b
        else:
            if b == 0 or a % b:
                raise ValueError(f"non-integer division {a}/{b}")
            r = a // b
        self.steps.append(Step(a, op, b, r))
        return r

    def gold_line(self, text: str, a: int, op: str, b: int, r: int) -> None:
        s = OP_SYMBOL[op]
        self.gold.append(f"{text} {a}{s}{b}=<<{a}{s}{b}={r}>>{r}.")


def _divisors(v: int, lo: int = 2, hi: int = 6) -> list[int]:
    return [k for k in range(lo, hi + 1) if v % k == 0 and v // k >= 2]


def _pick_ops(rng: random.Random, n: int, v: int, allow_pair: bool = True) -> list[str]:
    """Choose op kinds whose step counts sum to ``n`` (``pair`` = a product added/subtracted: 2 steps)."""
    ops: list[str] = []
    left = n
    while left > 0:
        choices = ["add", "sub", "mul", "div"]
        if allow_pair and left >= 2:
            choices += ["pair"]
        op = rng.choice(choices)
        ops.append(op)
        left -= 2 if op == "pair" else 1
    return ops


# ---------------------------------------------------------------------------------------------------------
# Families. Each returns (builder, answer, final question sentence); raises ValueError to request a retry.
# ---------------------------------------------------------------------------------------------------------


def _apply_op(rng: random.Random, b: _Builder, op: str, v: int, w: dict[str, str]) -> int:
    """Apply one op to the running value ``v`` using family wording ``w``; return the new value."""
    name, pro, unit = w["name"], w["pro"], w["unit"]
    if op == "div" or (op == "mul" and v * 2 > b.max):
        ks = _divisors(v)
        if not ks:
            op = "add" if v < b.max // 2 else "sub"
        else:
            k = rng.choice(ks)
            cont = rng.choice(CONTAINERS)
            r = b.step(v, "div", k)
            b.say(
                rng.choice(
                    [
                        f"{pro} splits the {unit} equally into {k} {cont} and keeps only one of them.",
                        f"{pro} shares the {unit} equally among {k} people, {name} included, and keeps one share.",
                        f"Then {pro.lower()} loses all but one {k}th of the {unit}."
                        if k > 3
                        else f"Then {pro.lower()} keeps only one {'half' if k == 2 else 'third'} of the {unit}.",
                    ]
                )
            )
            b.gold_line(f"{name} keeps", v, "div", k, r)
            return r
    if op == "mul":
        kmax = max(2, min(5, b.max // max(v, 1)))
        k = rng.randint(2, kmax)
        r = b.step(v, "mul", k)
        word = {2: "twice", 3: "three times", 4: "four times", 5: "five times"}[k]
        b.say(
            rng.choice(
                [
                    f"Then the number of {unit} {name} has becomes {word} as large.",
                    f"After a good week, {name} has {word} as many {unit} as before.",
                    f"{pro} multiplies the {unit} by {k}.",
                ]
            )
        )
        b.gold_line(f"{name} has", v, "mul", k, r)
        return r
    if op == "sub" and v < 4:
        op = "add"
    if op == "add":
        x = rng.randint(2, min(60, b.max - v)) if v < b.max - 2 else None
        if x is None:
            op = "sub"
        else:
            r = b.step(v, "add", x)
            b.say(
                rng.choice(
                    [
                        f"{pro} {w['gain']} {x} more {unit}.",
                        f"Later {name} {w['gain']} another {x} {unit}.",
                        f"Then {x} more {unit} are added to {name}'s pile.",
                    ]
                )
            )
            b.gold_line(f"{name} has", v, "add", x, r)
            return r
    # sub
    x = rng.randint(1, min(60, v - 2))
    r = b.step(v, "sub", x)
    b.say(
        rng.choice(
            [
                f"{pro} {w['lose']} {x} {unit}.",
                f"Then {name} gives {x} {unit} to a friend.",
                f"Sadly, {x} of the {unit} get lost.",
            ]
        )
    )
    b.gold_line(f"{name} has", v, "sub", x, r)
    return r


def _apply_pair(rng: random.Random, b: _Builder, v: int, w: dict[str, str]) -> int:
    """Add or remove a product (packs of items): two steps."""
    name, pro, unit = w["name"], w["pro"], w["unit"]
    cont = rng.choice(CONTAINERS)
    add = v < 30 or rng.random() < 0.5
    if add:
        a = rng.randint(2, 9)
        per = rng.randint(2, 12)
        while v + a * per > b.max and a > 1:
            a -= 1
        p = b.step(a, "mul", per)
        r = b.step(v, "add", p)
        b.say(f"{pro} {w['gain']} {a} {cont} with {per} {unit} in each.")
        b.gold_line(f"{name} gets", a, "mul", per, p)
        b.gold_line("Now there are", v, "add", p, r)
    else:
        cands = [(a, per) for a in range(2, 10) for per in range(2, 13) if a * per <= v - 2]
        a, per = rng.choice(cands)
        p = b.step(a, "mul", per)
        r = b.step(v, "sub", p)
        b.say(f"{pro} fills {a} {cont} with {per} {unit} each and gives the {cont} away.")
        b.gold_line(f"{name} gives away", a, "mul", per, p)
        b.gold_line("That leaves", v, "sub", p, r)
    return r


def _final_price(rng: random.Random, b: _Builder, v: int, w: dict[str, str]) -> tuple[int, str]:
    """Final step: price times count (money question)."""
    name, unit, one = w["name"], w["unit"], w["one"]
    pmax = max(2, min(9, 5 * b.max // max(v, 1)))
    p = rng.randint(2, pmax)
    r = b.step(v, "mul", p)
    b.say(f"{w['pro']} sells every {one} for ${p}.")
    b.gold_line(f"{name} earns", v, "mul", p, r)
    return r, f"How many dollars does {name} earn from selling all the {unit}?"


def _gen_inventory(rng: random.Random, n: int, max_value: int = MAX_VALUE) -> tuple[_Builder, int, str]:
    name = rng.choice(NAMES)
    one, unit = rng.choice(ITEMS)
    pro = rng.choice(["She", "He"])
    w = {
        "name": name,
        "pro": pro,
        "unit": unit,
        "one": one,
        "gain": rng.choice(["buys", "finds", "gets", "receives"]),
        "lose": rng.choice(
            [
                "gives away",
                "uses",
                "eats" if unit in ("apples", "cookies", "candies", "cupcakes") else "loses",
                "sells",
            ]
        ),
    }
    b = _Builder(max_value)
    v = rng.randint(5, 60)
    b.say(
        rng.choice(
            [
                f"{name} has {v} {unit}.",
                f"{name} starts the day with {v} {unit}.",
                f"There are {v} {unit} in {name}'s room.",
            ]
        )
    )
    price = n >= 3 and rng.random() < 0.3
    for op in _pick_ops(rng, n - int(price), v):
        v = _apply_pair(rng, b, v, w) if op == "pair" else _apply_op(rng, b, op, v, w)
    if price:
        v, question = _final_price(rng, b, v, w)
    else:
        question = rng.choice(
            [
                f"How many {unit} does {name} have now?",
                f"How many {unit} does {name} end up with?",
                f"How many {unit} are left with {name} at the end?",
            ]
        )
    return b, v, question


def _gen_compare(rng: random.Random, n: int, max_value: int = MAX_VALUE) -> tuple[_Builder, int, str]:
    names = rng.sample(NAMES, n + 1)
    one, unit = rng.choice(ITEMS)
    b = _Builder(max_value)
    v = rng.randint(5, 60)
    b.say(f"{names[0]} has {v} {unit}.")
    for i in range(n):
        prev, cur = names[i], names[i + 1]
        ks = _divisors(v, 2, 4)
        choices = ["add", "sub"] + (["mul"] if v * 2 <= b.max else []) + (["div"] if ks else [])
        if v < 4:
            choices.remove("sub")
        op = rng.choice(choices)
        if op == "add":
            x = rng.randint(2, min(50, b.max - v))
            r = b.step(v, "add", x)
            b.say(f"{cur} has {x} more {unit} than {prev}.")
        elif op == "sub":
            x = rng.randint(1, min(50, v - 2))
            r = b.step(v, "sub", x)
            b.say(f"{cur} has {x} fewer {unit} than {prev}.")
        elif op == "mul":
            k = rng.randint(2, max(2, min(4, b.max // v)))
            r = b.step(v, "mul", k)
            word = {2: "twice", 3: "three times", 4: "four times"}[k]
            b.say(f"{cur} has {word} as many {unit} as {prev}.")
        else:
            k = rng.choice(ks)
            r = b.step(v, "div", k)
            word = {2: "half", 3: "a third", 4: "a quarter"}[k]
            b.say(f"{cur} has {word} as many {unit} as {prev}.")
        b.gold_line(f"{cur} has", v, op, b.steps[-1].b, r)
        v = r
    return b, v, f"How many {unit} does {names[-1]} have?"


def _gen_rate(rng: random.Random, n: int, max_value: int = MAX_VALUE) -> tuple[_Builder, int, str]:
    place, unit = rng.choice(PLACES)
    hours = rng.randint(2, 9)
    rate = rng.randint(3, max(3, min(30, max_value // hours)))
    b = _Builder(max_value)
    v = b.step(rate, "mul", hours)
    b.say(f"A {place} makes {rate} {unit} every hour and works for {hours} hours.")
    b.gold_line("It makes", rate, "mul", hours, v)
    w = {
        "name": f"the {place}",
        "pro": "It",
        "unit": unit,
        "one": unit.rstrip("s"),
        "gain": "makes",
        "lose": "ships",
    }
    for op in _pick_ops(rng, n - 1, v, allow_pair=False):
        v = _apply_op(rng, b, op, v, w)
    # capitalise sentence starts that begin with "the <place>"
    b.q = [s[0].upper() + s[1:] for s in b.q]
    b.gold = [s[0].upper() + s[1:] for s in b.gold]
    return b, v, f"How many {unit} does the {place} have in the end?"


FAMILIES = {"inventory": _gen_inventory, "compare": _gen_compare, "rate": _gen_rate}


def _mathqa_options(rng: random.Random, answer: int, steps: list[Step]) -> tuple[str, str]:
    cands = {s.result for s in steps[-3:-1]} | {answer + d for d in (-10, -2, -1, 1, 2, 3, 10)}
    cands |= {answer * 2, answer + steps[-1].b if steps[-1].op != "add" else answer - steps[-1].b}
    cands = sorted(c for c in cands if c > 0 and c != answer)
    wrong = rng.sample(cands, 4)
    values = wrong + [answer]
    rng.shuffle(values)
    letters = "abcde"
    options = " , ".join(f"{letters[i]} ) {val}" for i, val in enumerate(values))
    return options, letters[values.index(answer)]


def make_problem(rng: random.Random, num_steps: int, max_value: int = MAX_VALUE) -> Problem:
    """Generate one problem with exactly ``num_steps`` steps (intermediate values <= ``max_value``)."""
    for _ in range(100):
        family = rng.choice(list(FAMILIES))
        try:
            b, answer, question = FAMILIES[family](rng, num_steps, max_value)
        except (ValueError, IndexError):
            continue
        if len(b.steps) != num_steps or not 0 < answer < 10000:
            continue
        q = " ".join(b.q + [question])
        think = "\n".join(b.trace() + [f"So the answer is {answer}."])
        solution = f"<think>\n{think}\n</think>\n\nThe answer is \\boxed{{{answer}}}."
        gold = "\n".join(b.gold + [f"#### {answer}"])
        options, correct = _mathqa_options(rng, answer, b.steps)
        rationale = '"' + " ".join(f"{s.expr()} = {s.result} ." for s in b.steps) + f' answer : {correct}"'
        return Problem(
            question=q,
            solution=solution,
            gold=gold,
            answer=answer,
            num_steps=num_steps,
            steps=b.steps,
            family=family,
            options=options,
            correct=correct,
            rationale=rationale,
        )
    raise RuntimeError("could not generate a problem")


def generate_problems(
    n: int,
    seed: int = 0,
    min_steps: int = 2,
    max_steps: int = 5,
    exclude: set[str] | None = None,
    max_value: int = MAX_VALUE,
) -> list[Problem]:
    """Generate ``n`` distinct problems with ``min_steps``..``max_steps`` steps, reproducibly from ``seed``."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[Problem] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise RuntimeError(f"could only generate {len(out)} distinct problems out of {n}")
        p = make_problem(rng, rng.randint(min_steps, max_steps), max_value)
        if p.question in seen:
            continue
        seen.add(p.question)
        out.append(p)
    return out


def generate_split(split: str, n: int, seed: int = 0, max_value: int = MAX_VALUE) -> list[Problem]:
    """Generate a split (``train``, ``test`` or ``hard``); ``test`` is disjoint from ``train`` by question."""
    if split not in SPLIT_STEPS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_STEPS)}")
    lo, hi = SPLIT_STEPS[split]
    return generate_problems(
        n, seed=seed + SPLIT_SEED_OFFSET[split], min_steps=lo, max_steps=hi, max_value=max_value
    )


def generate_splits(
    sizes: dict[str, int], seed: int = 0, max_value: int = MAX_VALUE
) -> dict[str, list[Problem]]:
    """Generate several splits; evaluation splits are made disjoint from ``train`` and from each other."""
    out: dict[str, list[Problem]] = {}
    for split in [s for s in ("test", "hard") if s in sizes]:
        out[split] = generate_split(split, sizes[split], seed=seed, max_value=max_value)
    held = {p.question for probs in out.values() for p in probs}
    if "train" in sizes:
        lo, hi = SPLIT_STEPS["train"]
        out["train"] = generate_problems(
            sizes["train"], seed=seed, min_steps=lo, max_steps=hi, exclude=held, max_value=max_value
        )
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_testbed(out_dir: str | Path, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, Path]:
    """Write ``gsm8k_<split>.jsonl`` and ``mathqa_<split>.jsonl`` per split into ``out_dir``; return paths."""
    sizes = sizes or {"train": 1000, "test": 500, "hard": 200}
    out_dir = Path(out_dir)
    splits = generate_splits(sizes, seed=seed)
    paths: dict[str, Path] = {}
    for split, probs in splits.items():
        gp, mp = out_dir / f"gsm8k_{split}.jsonl", out_dir / f"mathqa_{split}.jsonl"
        _write_jsonl(gp, [p.to_gsm8k() for p in probs])
        _write_jsonl(mp, [p.to_mathqa() for p in probs])
        paths[f"gsm8k_{split}"], paths[f"mathqa_{split}"] = gp, mp
        logger.info("wrote %d %s problems to %s", len(probs), split, out_dir)
    return paths
