"""The testbed problem generator: frames, splits, arithmetic, formats, held-out families, refusals."""

from __future__ import annotations

import json
import random
import re

import pytest

from optimum_resp.evaluation.extraction import extract_gsm8k_gold
from optimum_resp.testbed import compositional
from optimum_resp.testbed.compositional import (
    SPLIT_SPECS,
    generate_split,
    generate_splits,
    make_problem,
    write_testbed,
)
from optimum_resp.testbed.grammar import FRAMES, GRAMMAR, NAMES, NUMBER_WORDS, PART, TIMES, made_up_name
from optimum_resp.testbed.problems import ITEMS
from optimum_resp.testbed.tokenizer import build_testbed_tokenizer

OPERATIONS = ("start", "rate", "add", "sub", "mul", "div")


def test_every_operation_has_at_least_eight_frames_per_family_and_the_families_share_none():
    for family in FRAMES.values():
        for op in OPERATIONS:
            assert len(set(family[op])) >= 8, op
        assert (
            len(set(family["more"] + family["add"])) >= 8 and len(set(family["times"] + family["mul"])) >= 8
        )
        assert len(set(family["question"])) >= 5
    a = {t for frames in FRAMES["A"].values() for t in frames}
    b = {t for frames in FRAMES["B"].values() for t in frames}
    assert not a & b
    assert not set(NAMES["A"]) & set(NAMES["B"])


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", re.sub(r"\{[a-z_]+\}", " ", text.lower())))


_NOT_NAMES = set().union(*(_words(t) for fam in FRAMES.values() for frames in fam.values() for t in frames))
_NOT_NAMES |= set(NUMBER_WORDS) | {w for pair in ITEMS for unit in pair for w in unit.split()}


def _people(text: str) -> set[str]:
    """The names in a problem's text: capitalised words that no frame, item or number word spells."""
    return {w for w in re.findall(r"\b[A-Z][a-z]+\b", text) if w.lower() not in _NOT_NAMES}


def test_held_out_frames_are_new_combinations_of_phrasings_training_has_taught():
    # Every template has at least two slots with a choice, so each phrasing is in family A beside some
    # partners and in family B beside others: B holds no word that A lacks, only sentences A never says.
    for templates in GRAMMAR.values():
        for template, slots in templates:
            assert sum(len(options) >= 2 for options in slots.values()) >= 2, template
            assert all("{" + key + "}" in template for key in slots), template
    for group in FRAMES["B"]:
        a_words = set().union(*map(_words, FRAMES["A"][group]))
        for frame in FRAMES["B"][group]:
            assert _words(frame) <= a_words, (group, frame)
    # about one combination in four is held out
    total_b = sum(len(f) for f in FRAMES["B"].values())
    total = total_b + sum(len(f) for f in FRAMES["A"].values())
    assert 0.2 < total_b / total < 0.3


def _mentions(question: str, value: int, op: str) -> bool:
    words = [str(value)] + ([NUMBER_WORDS[value]] if value < len(NUMBER_WORDS) else [])
    words += [TIMES[value]] if op == "mul" and value in TIMES else []
    words += [PART[value]] if op == "div" and value in PART else []
    return any(re.search(rf"\b{w}\b", question, re.IGNORECASE) for w in words)


@pytest.mark.parametrize("family", ["A", "B"])
@pytest.mark.parametrize("num_steps", [1, 2, 4, 8])
def test_problems_compute_what_they_say(family, num_steps):
    rng = random.Random(num_steps)
    for _ in range(50):
        p = make_problem(rng, num_steps, family)
        assert p.num_steps == num_steps == len(p.steps)
        for step in p.steps:
            expected = {"add": step.a + step.b, "sub": step.a - step.b, "mul": step.a * step.b}.get(step.op)
            if step.op == "div":
                assert step.a % step.b == 0
                expected = step.a // step.b
            assert step.result == expected and 0 <= step.result <= compositional.MAX_VALUE
            assert _mentions(p.question, step.b, step.op) or step.b in {s.result for s in p.steps}, (
                p.question,
                step,
            )
        assert p.answer == p.steps[-1].result
        assert extract_gsm8k_gold(p.gold) == str(p.answer)
        assert p.solution.endswith(f"\\boxed{{{p.answer}}}.")
        people = _people(p.question)
        assert people
        if family == "B":  # held out: only family B's names
            assert people <= set(NAMES["B"]), p.question
        else:  # family A: its own names or made-up ones, never B's
            assert not people & set(NAMES["B"]), p.question
        # The trace quotes the question's sentences (all but the question itself), each once.
        quoted = [re.sub(r"( \d+ [-+*/] \d+ = \d+\.)+$", "", line[2:]) for line in p.think.splitlines()[:-1]]
        assert sorted(quoted) == sorted(re.split(r"(?<=\.) ", p.question)[:-1])


def test_wording_varies_numbers_as_words_distractors_and_facts_out_of_order():
    problems = generate_split("train", 400, seed=0)
    questions = [p.question for p in problems]
    assert any(
        re.search(r"\b(two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)\b", q) for q in questions
    )
    thinks = [p.think for p in problems]
    distracted = [
        t
        for t in thinks
        if any(line.startswith("> ") and not re.search(r"= \d+\.$", line) for line in t.splitlines()[1:])
    ]
    assert 0.2 < len(distracted) / len(thinks) < 0.9
    # A comparison stated before the fact it compares with: the trace quotes the fact first.
    out_of_order = [p for p in problems if p.think.splitlines()[0][2:] not in p.question.split(". ")[0] + "."]
    assert out_of_order
    # One to three people carry the arithmetic (distractors may name others): the opening fact's holder and
    # whoever holds the value after each step.
    counts = set()
    for p in problems:
        holders = {line.split(" has ")[0] for line in p.gold.splitlines()[:-1]}
        holders |= _people(p.think.splitlines()[0])
        counts.add(len(holders))
    assert counts == {1, 2, 3}


def test_splits_are_reproducible_disjoint_and_drawn_from_their_family(tmp_path):
    assert generate_split("test", 30, seed=3) == generate_split("test", 30, seed=3)
    assert generate_split("test", 30, seed=3) != generate_split("test", 30, seed=4)
    paths = write_testbed(tmp_path, {"train": 300, "test": 60, "held_out_frames": 60, "hard": 30}, seed=0)
    rows = {k: [json.loads(line) for line in v.read_text().splitlines()] for k, v in paths.items()}
    questions = {split: {r["question"] for r in rows[f"gsm8k_{split}"]} for split in SPLIT_SPECS}
    assert not questions["train"] & (questions["test"] | questions["held_out_frames"] | questions["hard"])
    for q in questions["held_out_frames"]:  # family B: no training name
        assert _people(q) <= set(NAMES["B"]), q
    hard = generate_split("hard", 20, seed=0)
    assert all(6 <= p.num_steps <= 8 for p in hard)
    assert [r["Problem"] for r in rows["mathqa_test"]] == [r["question"] for r in rows["gsm8k_test"]]
    for r in rows["mathqa_test"]:
        assert r["correct"] in "abcde" and r["options"].count(" , ") == 4


def test_training_names_are_unbounded_so_a_model_must_copy_them():
    rng = random.Random(0)
    made_up = [made_up_name(rng) for _ in range(2000)]
    assert not set(made_up) & set(NAMES["A"] + NAMES["B"])
    assert len(set(made_up)) > 1500 and all(re.fullmatch(r"[A-Z][a-z]+", n) for n in made_up)
    people = [_people(p.question) for p in generate_split("train", 400, seed=0)]
    real = set(NAMES["A"])
    # about half the people are made up, so most names in training are seen once
    share = sum(len(ps - real) for ps in people) / sum(len(ps) for ps in people)
    assert 0.35 < share < 0.65
    assert len(set().union(*people) - real) > 300


def test_impossible_settings_are_refused():
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1"):
        make_problem(random.Random(0), 0)
    with pytest.raises(ValueError, match="family must be one of"):
        make_problem(random.Random(0), 2, "C")
    with pytest.raises(ValueError, match=r"steps must be two integers 1 <= low <= high"):
        generate_split("train", 5, steps=(0, 3))
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        generate_split("dev", 5)
    with pytest.raises(ValueError, match=r"unknown splits \['dev'\]"):
        write_testbed("unused", {"dev": 5})


def test_a_request_larger_than_the_problems_it_can_make_is_refused(monkeypatch):
    one = make_problem(random.Random(0), 2)
    monkeypatch.setattr(compositional, "make_problem", lambda rng, n, family: one)  # a space of one problem
    with pytest.raises(
        ValueError, match=r"asked for 3 distinct test problems with 2-5 steps, but only 1 could be made"
    ):
        generate_split("test", 3)


def test_generate_splits_keeps_train_off_every_evaluation_question():
    splits = generate_splits({"train": 200, "test": 40, "hard": 10}, seed=1)
    assert {k: len(v) for k, v in splits.items()} == {"train": 200, "test": 40, "hard": 10}
    train = {p.question for p in splits["train"]}
    assert not train & {p.question for p in splits["test"] + splits["hard"]}
    # the evaluation splits do not depend on how much training data is asked for
    assert generate_splits({"train": 5, "test": 40}, seed=1)["test"] == splits["test"]
    with pytest.raises(ValueError, match=r"unknown splits \['dev'\]"):
        generate_splits({"dev": 5})


def test_tokenizer_is_built_from_the_training_family_and_round_trips_held_out_text():
    tok = build_testbed_tokenizer(num_problems=300, seed=0)
    held_out = generate_split("held_out_frames", 20, seed=0)
    for p in held_out:  # family B words are spelled with trained pieces: nothing is lost or unknown
        for text in (p.question, p.solution):
            assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # ... and with pieces training solutions contain, so a model trained on family A has learned to write
    # every token a held-out answer needs (the made-up training names cover the letters of B's names)
    trained = set()
    for p in generate_split("train", 1000, seed=1):
        trained |= set(tok(p.solution, add_special_tokens=False)["input_ids"])
    needed = set().union(*(tok(p.solution, add_special_tokens=False)["input_ids"] for p in held_out))
    assert needed <= trained, tok.convert_ids_to_tokens(sorted(needed - trained))
    assert all(len(tok(str(d), add_special_tokens=False)["input_ids"]) == 1 for d in range(10))


def test_shipped_files_are_the_generators_output(tmp_path):
    from optimum_resp.testbed import DATA_SIZES, SPLITS, testbed_data_path

    assert tuple(DATA_SIZES) == SPLITS
    paths = write_testbed(tmp_path, DATA_SIZES, seed=0)
    for split, n in DATA_SIZES.items():
        for task in ("gsm8k", "mathqa"):
            shipped = testbed_data_path(task, split)
            assert shipped.read_text() == paths[f"{task}_{split}"].read_text()
            assert len(shipped.read_text().splitlines()) == n
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        testbed_data_path("gsm8k", "dev")
    with pytest.raises(ValueError, match="unknown task 'gsm9k'"):
        testbed_data_path("gsm9k", "test")


@pytest.fixture(scope="module")
def eval_problems():
    return generate_split("test", 200, seed=0) + generate_split("held_out_frames", 100, seed=0)


def test_solution_and_gold_formats(eval_problems):
    for p in eval_problems:
        assert p.solution.startswith("<think>\n")
        assert p.solution.endswith(f"\n</think>\n\nThe answer is \\boxed{{{p.answer}}}.")
        lines = p.gold.split("\n")
        assert lines[-1] == f"#### {p.answer}"
        calcs = re.findall(r"<<([^=<>]+)=(-?\d+)>>(\d+)", p.gold)
        assert len(calcs) == p.num_steps
        for expr, res, shown in calcs:
            a, op, b = re.fullmatch(r"(\d+)([-+*/])(\d+)", expr).groups()
            val = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b), "/": int(a) / int(b)}[op]
            assert val == int(res) == int(shown)
        assert p.gold != p.think  # human-style gold differs from the model-style trace


def test_mathqa_variant(eval_problems):
    for p in eval_problems:
        m = re.fullmatch(r"a \) (\d+) , b \) (\d+) , c \) (\d+) , d \) (\d+) , e \) (\d+)", p.options)
        assert m, p.options
        values = [int(v) for v in m.groups()]
        assert len(set(values)) == 5
        assert sum(v == p.answer for v in values) == 1
        assert values["abcde".index(p.correct)] == p.answer
        assert p.rationale.endswith(f'answer : {p.correct}"')
        assert p.mathqa_solution().endswith(f"\\boxed{{{p.correct}}}.")


def test_mathqa_solution_checks_options_in_prompt_order(eval_problems):
    for p in eval_problems:
        prompt_options = re.findall(r"^([a-e])\) (\d+)$", p.mathqa_prompt(), flags=re.M)
        think = p.mathqa_solution().split("<think>\n", 1)[1].split("\n</think>", 1)[0]
        checks = re.findall(r"^([a-e])\) (\d+) (yes|no)$", think, flags=re.M)
        k = "abcde".index(p.correct) + 1
        # each checked option is written as in the prompt, the checks stop at the correct one
        assert [(letter, value) for letter, value, _ in checks] == prompt_options[:k]
        assert [verdict for _, _, verdict in checks] == ["no"] * (k - 1) + ["yes"]
        assert f"So the value is {p.answer}.\n" in think
        assert think.endswith(f"So it is option {p.correct}.")
        # the arithmetic is the GSM8K trace's, without its answer line
        assert think.startswith(p.think.rsplit("\n", 1)[0] + "\n")


def test_trace_quotes_each_question_sentence_token_for_token(eval_problems):
    tok = build_testbed_tokenizer(num_problems=300, seed=0)
    for p in eval_problems[:50] + eval_problems[-50:]:
        assert p.think.split("\n")[-1] == f"So the answer is {p.answer}."
        q_ids = tok(p.question, add_special_tokens=False)["input_ids"]
        for line in p.think.split("\n")[:-1]:
            assert line.startswith("> ")
            sentence = re.sub(r"( \d+ [-+*/] \d+ = \d+\.)+$", "", line[2:])
            assert sentence in p.question
            if not p.question.startswith(sentence):
                # the quote tokenizes exactly as the sentence does inside the question (first word included)
                ids = tok(" " + sentence, add_special_tokens=False)["input_ids"]
                assert any(q_ids[i : i + len(ids)] == ids for i in range(len(q_ids))), sentence
                assert tok(line, add_special_tokens=False)["input_ids"][1 : 1 + len(ids)] == ids


def test_prompts_match_evaluation_harness(eval_problems):
    from optimum_resp.evaluation.tasks import get_task

    for p in eval_problems[:20] + eval_problems[-20:]:
        assert get_task("gsm8k").build_user_text(p.to_gsm8k()) == p.gsm8k_prompt()
        assert get_task("mathqa").build_user_text(p.to_mathqa()) == p.mathqa_prompt()
        assert get_task("gsm8k").gold(p.to_gsm8k()) == str(p.answer)
        assert get_task("mathqa").gold(p.to_mathqa()) == p.correct
