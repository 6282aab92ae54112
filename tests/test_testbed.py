"""Tests for the testbed: problem generator, tokenizer, shipped checkpoint and training script."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_resp.testbed import SPLITS, generate_split, testbed_data_path, testbed_model_path
from optimum_resp.testbed.tokenizer import build_testbed_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_tokenizer():
    return build_testbed_tokenizer(num_problems=300, seed=0)


def test_tokenizer_round_trip_and_digits(small_tokenizer):
    p = generate_split("held_out_frames", 1, seed=11)[0]
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
    probs = generate_split("test", 8)  # the generator the shipped model was trained on
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


@pytest.mark.slow
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
    """A folder holding another model is refused before any training, unless told to overwrite or continue it."""
    spec = importlib.util.spec_from_file_location(
        "train_tiny_reasoner", REPO / "examples" / "train_tiny_reasoner.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
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
    splits = [s for s in SPLITS if s != "train"]
    expected = {
        (split, fmt, dec) for split in splits for fmt in ("gsm8k", "mathqa") for dec in ("greedy", "sampled")
    }
    assert expected <= set(rows)
    # the training run's own greedy check agrees with the card wherever both evaluated the same problems
    for split, check in (info.get("greedy_eval") or {"test": info["heldout_greedy_eval"]}).items():
        card = rows[(split, "gsm8k", "greedy")]
        if card[3] == str(check["n"]):
            assert card[4] == f"{check['accuracy']:.1%}"


def test_training_problems_stay_off_every_shipped_evaluation_problem():
    """However few problems a run evaluates, its training set holds none of the shipped evaluation files."""
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
        for line in testbed_data_path("gsm8k", split).read_text().splitlines()
    }
    assert not {p.question for p in splits["train"]} & shipped
    assert [p.question for p in splits["test"]] == [
        json.loads(line)["question"] for line in testbed_data_path("gsm8k", "test").read_text().splitlines()
    ][:20]
