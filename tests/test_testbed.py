"""Tests for the testbed: problem generator, tokenizer, shipped checkpoint and training script."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_resp.testbed import (
    DATA_VERSIONS,
    SPLIT_STEPS,
    generate_problems,
    generate_split,
    generate_split_v2,
    generate_splits,
    testbed_data_path,
    testbed_model_path,
    write_testbed,
)
from optimum_resp.testbed.tokenizer import build_testbed_tokenizer

REPO = Path(__file__).resolve().parents[1]
OPS = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b}


@pytest.fixture(scope="module")
def splits():
    return generate_splits({"train": 3000, "test": 300, "hard": 100}, seed=0)


@pytest.fixture(scope="module")
def small_tokenizer():
    return build_testbed_tokenizer(num_problems=300, seed=0)


def test_generator_is_deterministic():
    a = [p.to_dict() for p in generate_problems(50, seed=3)]
    b = [p.to_dict() for p in generate_problems(50, seed=3)]
    c = [p.to_dict() for p in generate_problems(50, seed=4)]
    assert a == b
    assert [p["question"] for p in a] != [p["question"] for p in c]
    assert len({p["question"] for p in a}) == 50


def test_answers_recomputed_from_steps(splits):
    for probs in splits.values():
        for p in probs:
            assert len(p.steps) == p.num_steps
            prev = None
            for s in p.steps:
                assert all(isinstance(x, int) and x > 0 for x in (s.a, s.b, s.result))
                if s.op == "div":
                    assert s.a % s.b == 0 and s.a // s.b == s.result
                else:
                    assert OPS[s.op](s.a, s.b) == s.result
                # every step builds on an earlier result (chain), except a step that starts the chain or
                # computes a side product (packs of items / rate * hours)
                if prev is not None and s.op != "mul":
                    assert prev.result in (s.a, s.b)
                prev = s
                assert f"{s.expr()} = {s.result}" in p.think
            assert p.steps[-1].result == p.answer
            assert 0 < p.answer < 10000


def test_values_stay_moderate(splits):
    from optimum_resp.testbed.problems import MAX_VALUE

    for probs in splits.values():
        for p in probs:
            # every intermediate value respects the cap; only a final price step may exceed it
            assert all(s.result <= MAX_VALUE for s in p.steps[:-1]), p.steps
            assert p.answer <= 5 * MAX_VALUE
    small = generate_problems(200, seed=1, max_value=60)
    assert all(s.result <= 60 for p in small for s in p.steps[:-1])


def test_solution_and_gold_formats(splits):
    for p in splits["test"]:
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


def test_step_counts_per_split(splits):
    for split, probs in splits.items():
        lo, hi = SPLIT_STEPS[split]
        counts = {p.num_steps for p in probs}
        assert counts == set(range(lo, hi + 1)), (split, counts)
    assert SPLIT_STEPS["hard"][0] > SPLIT_STEPS["train"][1]


def test_train_test_disjoint(splits):
    train = {p.question for p in splits["train"]}
    assert not train & {p.question for p in splits["test"]}
    assert not train & {p.question for p in splits["hard"]}
    assert generate_split("test", 20)[0].question == splits["test"][0].question


def test_mathqa_variant(splits):
    for p in splits["test"]:
        m = re.fullmatch(r"a \) (\d+) , b \) (\d+) , c \) (\d+) , d \) (\d+) , e \) (\d+)", p.options)
        assert m, p.options
        values = [int(v) for v in m.groups()]
        assert len(set(values)) == 5
        assert sum(v == p.answer for v in values) == 1
        assert values["abcde".index(p.correct)] == p.answer
        assert p.rationale.endswith(f'answer : {p.correct}"')
        assert p.mathqa_solution().endswith(f"\\boxed{{{p.correct}}}.")


def test_mathqa_solution_checks_options_in_prompt_order(splits):
    for p in splits["test"]:
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


def test_trace_quotes_each_question_sentence_token_for_token(splits, small_tokenizer):
    for p in splits["test"][:50]:
        quoted = [line for line in p.think.split("\n") if line.startswith("> ")]
        assert quoted and p.think.split("\n")[-1] == f"So the answer is {p.answer}."
        for line in quoted:
            sentence = line[2:].split(". ")[0].rstrip(".") + "."
            assert sentence in p.question
            if not p.question.startswith(sentence):
                # the quote tokenizes exactly as the sentence does inside the question (first word included)
                ids = small_tokenizer(" " + sentence, add_special_tokens=False)["input_ids"]
                q_ids = small_tokenizer(p.question, add_special_tokens=False)["input_ids"]
                assert any(q_ids[i : i + len(ids)] == ids for i in range(len(q_ids))), sentence
                assert small_tokenizer(line, add_special_tokens=False)["input_ids"][1 : 1 + len(ids)] == ids


def test_prompts_match_evaluation_harness(splits):
    from optimum_resp.evaluation.tasks import get_task

    for p in splits["test"][:20]:
        assert get_task("gsm8k").build_user_text(p.to_gsm8k()) == p.gsm8k_prompt()
        assert get_task("mathqa").build_user_text(p.to_mathqa()) == p.mathqa_prompt()
        assert get_task("gsm8k").gold(p.to_gsm8k()) == str(p.answer)
        assert get_task("mathqa").gold(p.to_mathqa()) == p.correct


def test_write_testbed_and_shipped_files(tmp_path):
    paths = write_testbed(tmp_path, {"test": 10, "hard": 5})
    rows = [json.loads(line) for line in paths["gsm8k_test"].read_text().splitlines()]
    assert len(rows) == 10 and set(rows[0]) == {"question", "answer"}
    rows = [json.loads(line) for line in paths["mathqa_hard"].read_text().splitlines()]
    assert len(rows) == 5 and set(rows[0]) == {"Problem", "options", "correct", "Rationale"}
    # the shipped files are exactly what the generator produces for seed 0
    shipped = [json.loads(line) for line in testbed_data_path("gsm8k", "test", "v1").read_text().splitlines()]
    assert len(shipped) == 500
    assert shipped[:10] == [json.loads(line) for line in paths["gsm8k_test"].read_text().splitlines()]
    for task in ("gsm8k", "mathqa"):
        for split, n in (("train", 1000), ("test", 500), ("hard", 200)):
            assert len(testbed_data_path(task, split, "v1").read_text().splitlines()) == n
    with pytest.raises(ValueError):
        testbed_data_path("gsm9k", "test")


def test_tokenizer_round_trip_and_digits(small_tokenizer):
    p = generate_problems(1, seed=11)[0]
    for text in (p.question, p.solution, p.gold, p.options):
        ids = small_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert small_tokenizer.decode(ids) == text
    toks = small_tokenizer.tokenize("x 1234 = 56")
    assert all(len(t.replace("Ġ", "")) <= 1 for t in toks if any(c.isdigit() for c in t))
    ids = small_tokenizer("<think>\n</think>", add_special_tokens=False)["input_ids"]
    assert small_tokenizer.convert_ids_to_tokens(ids)[0] == "<think>"
    assert "<think>" in small_tokenizer.decode(ids, skip_special_tokens=True)
    assert small_tokenizer.eos_token == "<|im_end|>" and small_tokenizer.pad_token == "<|endoftext|>"


def test_chat_template(small_tokenizer, tmp_path):
    small_tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    on = tok.apply_chat_template(msgs, add_generation_prompt=True, enable_thinking=True, tokenize=False)
    assert on == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    off = tok.apply_chat_template(msgs, add_generation_prompt=True, enable_thinking=False, tokenize=False)
    assert off == on + "<think>\n\n</think>\n\n"
    plain = tok.apply_chat_template(msgs, add_generation_prompt=False, tokenize=False)
    assert plain == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
    hist = msgs + [
        {"role": "assistant", "content": "<think>\n2 + 3 = 5\n</think>\n\nThe answer is 5."},
        {"role": "user", "content": "Thanks"},
    ]
    rendered = tok.apply_chat_template(hist, add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>assistant\nThe answer is 5.<|im_end|>" in rendered
    assert tok.padding_side == "left"


@pytest.fixture(scope="module")
def shipped():
    path = testbed_model_path()
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_shipped_checkpoint_loads(shipped):
    model, tok = shipped
    cfg = model.config
    assert cfg.model_type == "qwen3"
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # GQA
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert (testbed_model_path() / "model.safetensors").stat().st_size <= 25 * 2**20
    info = json.loads((testbed_model_path() / "training_info.json").read_text())
    assert info["steps"] > 0 and "command" in info


def test_shipped_checkpoint_generates_traces(shipped):
    model, tok = shipped
    probs = generate_split_v2("test", 8)  # the generator the shipped model was trained on
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": p.gsm8k_prompt()}],
            add_generation_prompt=True,
            enable_thinking=True,
            tokenize=False,
        )
        for p in probs
    ]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest and robust on a shared CPU
    try:
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=400, do_sample=False)
    finally:
        torch.set_num_threads(threads)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    right = 0
    for p, text in zip(probs, texts, strict=True):
        assert text.startswith("<think>\n"), text
        assert "</think>" in text and "\\boxed{" in text.split("</think>")[1], text
        right += f"\\boxed{{{p.answer}}}" in text.split("</think>")[1]
    assert right >= 6  # it scores ~98% on this split


def test_training_script_quick_run(tmp_path):
    out = tmp_path / "ckpt"
    cmd = [
        sys.executable,
        str(REPO / "examples" / "train_tiny_reasoner.py"),
        "--output-dir",
        str(out),
        "--size",
        "tiny",
        "--max-steps",
        "3",
        "--num-train",
        "64",
        "--eval-n",
        "2",
        "--max-new-tokens",
        "8",
        "--batch-size",
        "8",
        "--tokenizer-problems",
        "200",
        "--save-every-min",
        "0",
        "--threads",
        "1",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads((out / "training_info.json").read_text())
    assert info["steps"] == 3 and info["heldout_greedy_eval"]["n"] == 2
    # the default data is generator v2, evaluated on its same-family test split and on the held-out frames
    assert info["data"] == "v2" and set(info["greedy_eval"]) == {"test", "held_out_frames"}
    assert all(e["n"] == 2 for e in info["greedy_eval"].values())
    assert info["device"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    enc = tok("<|im_start|>user\nhi<|im_end|>\n", return_tensors="pt", add_special_tokens=False)
    assert model(**enc).logits.shape[-1] == len(tok)

    # the folder now holds a model: a second run into it is refused before any work, and the model is kept
    before = (out / "model.safetensors").read_bytes()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert again.returncode != 0
    assert "already holds a model" in again.stderr and "--overwrite" in again.stderr, again.stderr[-2000:]
    assert (out / "model.safetensors").read_bytes() == before


def test_training_script_refusals(tmp_path):
    """Refusals that need no training: --max-value with v2 data, and a folder holding another model."""
    spec = importlib.util.spec_from_file_location(
        "train_tiny_reasoner", REPO / "examples" / "train_tiny_reasoner.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit, match="--max-value applies to --data v1 only"):
        script.main(["--output-dir", str(tmp_path / "a"), "--max-value", "500"])
    held = tmp_path / "held"
    held.mkdir()
    (held / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="already holds a model"):
        script.check_output_dir(held, None, overwrite=False)
    script.check_output_dir(held, None, overwrite=True)  # told to overwrite
    script.check_output_dir(held, str(held), overwrite=False)  # continuing that very model
    script.check_output_dir(tmp_path / "empty", None, overwrite=False)


def test_training_record_chains_the_runs_a_checkpoint_continues(tmp_path):
    """A run started with --init-from records the runs behind its starting checkpoint, oldest first."""
    spec = importlib.util.spec_from_file_location(
        "train_tiny_reasoner", REPO / "examples" / "train_tiny_reasoner.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.previous_runs(None) == []
    assert script.previous_runs(str(tmp_path)) == []  # a checkpoint without a record
    first = {"command": "first", "steps": 10}
    second = {"command": "second", "steps": 5, "previous_runs": [first]}
    (tmp_path / "training_info.json").write_text(json.dumps(second))
    assert [r["command"] for r in script.previous_runs(str(tmp_path))] == ["first", "second"]
    assert all("previous_runs" not in r for r in script.previous_runs(str(tmp_path)))


def test_model_card_evaluation_is_the_benchmark_scripts_block():
    """The card's accuracy table is written by benchmarks/bench_testbed.py, and agrees with training_info.json."""
    card = (testbed_model_path() / "README.md").read_text()
    block = card.split("<!-- evaluation:start -->", 1)[1].split("<!-- evaluation:end -->", 1)[0]
    rows = {
        tuple(cells[:3]): cells
        for cells in (
            [c.strip() for c in line.strip("|").split("|")]
            for line in block.splitlines()
            if line.startswith("| ")
        )
    }
    info = json.loads((testbed_model_path() / "training_info.json").read_text())
    splits = [s for s in DATA_VERSIONS[info.get("data", "v1")] if s != "train"]
    expected = {
        (split, fmt, dec) for split in splits for fmt in ("gsm8k", "mathqa") for dec in ("greedy", "sampled")
    }
    assert expected <= set(rows)
    # the training run's own greedy check agrees with the card wherever both evaluated the same problems
    for split, check in (info.get("greedy_eval") or {"test": info["heldout_greedy_eval"]}).items():
        card = rows[(split, "gsm8k", "greedy")]
        if card[3] == str(check["n"]):
            assert card[4] == f"{check['accuracy']:.1%}"


def test_v2_training_problems_stay_off_every_shipped_evaluation_problem():
    """However few problems a run evaluates, its training set holds none of the shipped v2 evaluation files."""
    spec = importlib.util.spec_from_file_location(
        "train_tiny_reasoner", REPO / "examples" / "train_tiny_reasoner.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = script.parse_args(["--output-dir", "x", "--num-train", "3000", "--eval-n", "20"])
    splits = script.make_splits(args)
    assert {k: len(v) for k, v in splits.items()} == {"train": 3000, "test": 20, "held_out_frames": 20}
    shipped = {
        json.loads(line)["question"]
        for split in ("test", "held_out_frames", "hard")
        for line in testbed_data_path("gsm8k", split, "v2").read_text().splitlines()
    }
    assert not {p.question for p in splits["train"]} & shipped
    assert [p.question for p in splits["test"]] == [
        json.loads(line)["question"]
        for line in testbed_data_path("gsm8k", "test", "v2").read_text().splitlines()
    ][:20]
