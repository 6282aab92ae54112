"""The records the testbed generator (`compositional`) makes: a `Problem` of `Step`s, in GSM8K and MathQA form."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

OP_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}

REASONING_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
"""GSM8K instruction appended by the evaluation harness (``optimum_resp.evaluation.tasks``)."""

MATHQA_INSTRUCTION = "Please reason step by step, and put the letter of the correct option within \\boxed{}."
"""MathQA instruction appended by the evaluation harness."""

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


def mathqa_options(rng: random.Random, answer: int, steps: list[Step]) -> tuple[str, str]:
    """Five lettered options (the answer and four near misses drawn from the steps) and the correct letter."""
    cands = {s.result for s in steps[-3:-1]} | {answer + d for d in (-10, -2, -1, 1, 2, 3, 10)}
    cands |= {answer * 2, answer + steps[-1].b if steps[-1].op != "add" else answer - steps[-1].b}
    cands = sorted(c for c in cands if c > 0 and c != answer)
    wrong = rng.sample(cands, 4)
    values = wrong + [answer]
    rng.shuffle(values)
    letters = "abcde"
    options = " , ".join(f"{letters[i]} ) {val}" for i, val in enumerate(values))
    return options, letters[values.index(answer)]
