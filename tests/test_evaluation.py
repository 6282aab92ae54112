"""Tests for task loading, the evaluation harness (scripted and tiny random models) and the evaluate metric."""

import json
import re
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest
from conftest import tiny_model, tiny_tokenizer
from scripted_model import ScriptedModel

from optimum_resp.evaluation import (
    TASKS,
    EvalConfig,
    EvalResult,
    evaluate_model,
    load_task_dataset,
    metric_path,
    wilson_interval,
)
from optimum_resp.evaluation.harness import prompt_opens_think
from optimum_resp.evaluation.tasks import TaskDataError, format_mathqa_options, get_task

FIXTURES = Path(__file__).parent / "fixtures"
GSM8K_FILE = FIXTURES / "gsm8k_sample.jsonl"
MATHQA_FILE = FIXTURES / "mathqa_sample.jsonl"
SUMMARY_KEYS = {
    "task",
    "n",
    "accuracy",
    "ci_low",
    "ci_high",
    "mean_generated_tokens",
    "truncated_fraction",
    "tokens_per_second",
    "engine",
    "config",
}
SAMPLE_KEYS = {
    "index",
    "prompt",
    "completion",
    "extracted",
    "gold",
    "correct",
    "generated_tokens",
    "truncated",
    "rule",
}


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


# ------------------------------------------------------------------------------------------- loading


def test_load_local_jsonl_json_and_parquet(tmp_path):
    rows = read_jsonl(GSM8K_FILE)
    ds = load_task_dataset("gsm8k", GSM8K_FILE)
    assert len(ds) == 30 and ds[0]["question"] == rows[0]["question"]
    assert len(load_task_dataset("gsm8k", str(GSM8K_FILE), limit=5)) == 5

    json_file = tmp_path / "mathqa.json"
    json_file.write_text(json.dumps(read_jsonl(MATHQA_FILE)[:7]))
    assert load_task_dataset("mathqa", json_file)["correct"] == [
        r["correct"] for r in read_jsonl(MATHQA_FILE)[:7]
    ]

    parquet_file = tmp_path / "gsm8k.parquet"
    datasets.Dataset.from_list(rows[:4]).to_parquet(str(parquet_file))
    assert load_task_dataset("gsm8k", parquet_file)["answer"] == [r["answer"] for r in rows[:4]]


def test_load_folder_selects_split_files(tmp_path):
    rows = read_jsonl(GSM8K_FILE)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[3:8]))
    assert load_task_dataset("gsm8k", tmp_path, split="test")["question"] == [
        r["question"] for r in rows[3:8]
    ]
    assert load_task_dataset("gsm8k", tmp_path, split="train")["question"] == [
        r["question"] for r in rows[:3]
    ]
    # A folder without split names is read whole.
    whole = tmp_path / "whole"
    whole.mkdir()
    (whole / "part1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    (whole / "part2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[2:5]))
    assert len(load_task_dataset("gsm8k", whole, split="test")) == 5


def test_missing_field_is_a_clear_error(tmp_path):
    bad = tmp_path / "renamed.jsonl"
    bad.write_text(json.dumps({"query": "How many?", "answer": "#### 3"}) + "\n")
    with pytest.raises(ValueError, match=r"renamed\.jsonl.*missing required field\(s\) \['question'\]"):
        load_task_dataset("gsm8k", bad)
    mathqa = tmp_path / "no_options.jsonl"
    mathqa.write_text(json.dumps({"Problem": "p", "correct": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"no_options\.jsonl.*'options'"):
        load_task_dataset("mathqa", mathqa)


def test_unreadable_and_missing_files_are_clear_errors(tmp_path):
    garbage = tmp_path / "broken.jsonl"
    garbage.write_text('{"question": "unterminated\n{{{ not json\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl, line 1: not valid JSON"):
        load_task_dataset("gsm8k", garbage)
    parquet = tmp_path / "broken.parquet"  # formats datasets reads itself still name the file
    parquet.write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=r"Cannot read data file\(s\) .*broken\.parquet"):
        load_task_dataset("gsm8k", parquet)
    text_file = tmp_path / "data.txt"
    text_file.write_text("hello")
    with pytest.raises(ValueError, match=r"Unsupported data file .*data\.txt"):
        load_task_dataset("gsm8k", text_file)
    with pytest.raises(ValueError, match=r"does not exist"):
        load_task_dataset("gsm8k", tmp_path / "nope.jsonl")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match=r"No \.jsonl/\.json/\.parquet files in folder"):
        load_task_dataset("gsm8k", empty_dir)
    with pytest.raises(ValueError, match="Unknown task"):
        load_task_dataset("svamp", GSM8K_FILE)


def _rows_file(tmp_path, questions, field="question", blank_after=1, **other):
    """A .jsonl of rows with these questions (and a blank line after row `blank_after`, as files have)."""
    lines = [json.dumps({field: q, **(other or {"answer": "#### 1"})}) for q in questions]
    lines.insert(blank_after, "")
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("question", "why"),
    [
        (None, "is null"),
        ("", "is empty"),
        ("  \n ", "is only whitespace"),
        (42, r"is a int \(42\), not text"),
    ],
)
def test_rows_without_question_text_are_refused_naming_the_line_or_skipped(tmp_path, caplog, question, why):
    path = _rows_file(tmp_path, ["What is 1+1?", "What is 2+2?", question, "What is 3+3?"])
    # Line 4: a blank line 2 sits before it, so the row index (2) is not the line number.
    with pytest.raises(
        TaskDataError, match=rf"{path}, line 4: field 'question' {why}; 1 of 4 rows .*skip-invalid"
    ):
        load_task_dataset("gsm8k", path)
    ds = load_task_dataset("gsm8k", path, skip_invalid_rows=True)
    assert ds["question"] == ["What is 1+1?", "What is 2+2?", "What is 3+3?"]
    assert "Skipped 1 of 4 rows whose 'question' is missing, null, empty or not text" in caplog.text
    # MathQA's problem text lives in `Problem`; a file whose every row is bad leaves nothing to skip to.
    path = _rows_file(tmp_path, [question], field="Problem", options="a ) 1 , b ) 2", correct="a")
    with pytest.raises(TaskDataError, match=rf"line 1: field 'Problem' {why}"):
        load_task_dataset("mathqa", path)
    with pytest.raises(TaskDataError, match="and so is every row's: nothing is left"):
        load_task_dataset("mathqa", path, skip_invalid_rows=True)


def test_eval_refuses_or_skips_rows_without_question_text(tokenizer, tmp_path):
    path = _rows_file(tmp_path, ["What is 1+1?", None, "What is 3+3?"])
    model = ScriptedModel(tokenizer, lambda prompt: "\\boxed{1}")
    with pytest.raises(TaskDataError, match=r"line 3: field 'question' is null"):
        evaluate_model(model, tokenizer, EvalConfig(data=str(path)), show_progress=False)
    assert model.calls == []  # refused before any generation
    config = EvalConfig(data=str(path), skip_invalid_rows=True, generation={"max_new_tokens": 8})
    result = evaluate_model(model, tokenizer, config, show_progress=False)
    assert result.summary["n"] == 2 and "None" not in "".join(s["prompt"] for s in result.samples)


def test_offline_hub_id_explains_to_pass_a_local_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TaskDataError, match=r"'openai/gsm8k'.*pass a local \.jsonl/\.json/\.parquet file"):
        load_task_dataset("gsm8k")
    with pytest.raises(ValueError, match=r"'allenai/math_qa'.*local"):
        load_task_dataset("mathqa", split="validation")


# ------------------------------------------------------------------------------------------- task specs


def test_task_registry_prompts_and_golds():
    assert set(TASKS) == {"gsm8k", "mathqa"}
    assert get_task("GSM-8K").name == "gsm8k" and get_task("math_qa").name == "mathqa"
    gsm = read_jsonl(GSM8K_FILE)
    spec = TASKS["gsm8k"]
    assert [spec.gold(r) for r in gsm[12:14]] == ["1395", "7"]
    assert spec.gold(gsm[9]) == "-2" and spec.gold(gsm[11]) == "29.5"
    assert spec.build_user_text(gsm[0]).startswith(gsm[0]["question"])
    assert "\\boxed{}" in spec.build_user_text(gsm[0])
    shot = spec.fewshot_answer(gsm[0])
    assert "<<" not in shot and "####" not in shot and shot.endswith("The answer is \\boxed{138}.")

    mathqa = read_jsonl(MATHQA_FILE)
    spec = TASKS["mathqa"]
    text = spec.build_user_text(mathqa[0])
    assert "Options:\na) 12\nb) 15\nc) 18\nd) 20\ne) 24" in text
    assert spec.gold({"correct": "C"}) == "c"
    shot = spec.fewshot_answer(mathqa[0])
    assert shot == "36 / 2 = 18 km / hr\nThe answer is \\boxed{c}."
    assert spec.fewshot_answer({"correct": "b"}) == "The answer is \\boxed{b}."
    assert format_mathqa_options(["a ) 1", "b ) 2"]) == "a) 1\nb) 2"


def test_fixture_golds_are_consistent():
    for row in read_jsonl(MATHQA_FILE):
        # Every MathQA fixture rationale's final number picks the labelled option.
        result = TASKS["mathqa"].extract(row["Rationale"].rsplit("answer", 1)[0], row, False)
        assert result.answer == row["correct"], row["Problem"]
    assert all(TASKS["gsm8k"].gold(r) for r in read_jsonl(GSM8K_FILE))


# ------------------------------------------------------------------------------------------- config


def test_eval_config_validation_and_round_trip():
    config = EvalConfig(
        task="mathqa", data=str(MATHQA_FILE), limit=3, num_fewshot=2, generation={"max_new_tokens": 16}
    )
    assert EvalConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.generation.max_new_tokens == 16
    with pytest.raises(ValueError, match="Unknown EvalConfig key"):
        EvalConfig.from_dict({"task": "gsm8k", "shots": 3})
    with pytest.raises(ValueError, match="Unknown task"):
        EvalConfig(task="aime")
    with pytest.raises(ValueError, match="limit"):
        EvalConfig(limit=0)
    with pytest.raises(ValueError, match="num_fewshot"):
        EvalConfig(num_fewshot=-1)
    with pytest.raises(ValueError, match=r"temperature must be a number in \(0.0"):
        EvalConfig(generation={"do_sample": True, "temperature": 0})
    with pytest.raises(ValueError, match="fewshot_split"):
        EvalConfig(fewshot_split="test")


def test_wilson_interval_known_values():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(0.7225, abs=1e-4) and high == 1.0
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_prompt_opens_think():
    assert prompt_opens_think("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_think("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not prompt_opens_think("<|im_start|>assistant\n")


# ------------------------------------------------------------------------------------------- harness


def _question_of(prompt, rows, field):
    """Index of the (last) question of ``rows`` that appears in the prompt's final user turn."""
    last_turn = prompt.rsplit("<|im_start|>user\n", 1)[1]
    return next(i for i, r in enumerate(rows) if last_turn.startswith(r[field].strip()))


def test_gsm8k_harness_scores_scripted_answers_exactly(tokenizer, tmp_path):
    rows = read_jsonl(GSM8K_FILE)
    golds = [TASKS["gsm8k"].gold(r) for r in rows]
    # item i % 5 == 0: boxed correct; 1: thinking then "The answer is" correct; 2: number only in the
    # thinking block (closed) then nothing -> wrong; 3: wrong number; 4: never ends (truncated) -> wrong.
    replies = {
        0: lambda g: f"<think>\nsome work\n</think>\n\nSo the total is \\boxed{{{g}}}.",
        1: lambda g: f"<think>\nI get {g}.\n</think>\n\nThe answer is {g}.",
        2: lambda g: f"<think>\nclearly {g}\n</think>\n\nI am done.",
        3: lambda g: f"The answer is {float(g) + 1}.",
        4: lambda g: "<think>\n" + "let me think again " * 20,
    }

    def script(prompt):
        i = _question_of(prompt, rows, "question")
        return replies[i % 5](golds[i])

    model = ScriptedModel(tokenizer, script)
    config = EvalConfig(
        task="gsm8k", data=str(GSM8K_FILE), limit=10, generation={"max_new_tokens": 60, "batch_size": 4}
    )
    out_dir = tmp_path / "run"
    result = evaluate_model(model, tokenizer, config, output_dir=out_dir, show_progress=False)

    assert isinstance(result, EvalResult)
    assert [s["correct"] for s in result.samples] == [True, True, False, False, False] * 2
    assert [s["rule"] for s in result.samples[:5]] == [
        "boxed",
        "answer_is",
        "no_answer",
        "answer_is",
        "unclosed_think",
    ]
    assert result.samples[3]["extracted"] == str(int(golds[3]) + 1)
    assert [s["truncated"] for s in result.samples[:5]] == [False, False, False, False, True]
    assert result.samples[4]["generated_tokens"] == 60
    reply_ids = tokenizer.encode(replies[0](golds[0]), add_special_tokens=False)
    assert result.samples[0]["generated_tokens"] == len(reply_ids) + 1  # + <|im_end|>
    assert [s["gold"] for s in result.samples] == golds[:10]
    assert [s["index"] for s in result.samples] == list(range(10))

    summary = result.summary
    assert set(summary) == SUMMARY_KEYS
    assert (summary["task"], summary["n"], summary["accuracy"]) == ("gsm8k", 10, 0.4)
    assert (summary["ci_low"], summary["ci_high"]) == wilson_interval(4, 10)
    assert summary["truncated_fraction"] == 0.2
    assert summary["mean_generated_tokens"] == sum(s["generated_tokens"] for s in result.samples) / 10
    assert summary["tokens_per_second"] > 0
    assert summary["engine"] == "hf"
    assert summary["config"] == config.to_dict()

    lines = read_jsonl(out_dir / "samples.jsonl")
    assert lines == result.samples and all(set(line) == SAMPLE_KEYS for line in lines)
    assert json.loads((out_dir / "summary.json").read_text()) == summary
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "samples.jsonl",
        "summary.json",
    ]  # no temp files left


def test_mathqa_harness_with_head_fewshot(tokenizer):
    rows = read_jsonl(MATHQA_FILE)
    # Correct letter in a box for even items, the numeric value of the correct option for odd ones
    # (scored through option matching), except item 5 which answers a wrong letter.

    def script(prompt):
        i = _question_of(prompt, rows, "Problem")
        row = rows[i]
        if i == 5:
            return "</think>\nThe answer is (b)." if row["correct"] != "b" else "The answer is (a)."
        if i % 2 == 0:
            return f"<think>\nworking\n</think>\n\n\\boxed{{{row['correct'].upper()}}}"
        value = re.search(rf"{row['correct']} \) ([^,]+)", row["options"]).group(1)
        return f"The result is {value.strip()}"

    model = ScriptedModel(tokenizer, script)
    config = EvalConfig(
        task="mathqa", data=str(MATHQA_FILE), limit=6, num_fewshot=2, generation={"max_new_tokens": 80}
    )
    result = evaluate_model(model, tokenizer, config, show_progress=False)

    assert [s["index"] for s in result.samples] == [2, 3, 4, 5, 6, 7]  # the first 2 items are exemplars
    assert [s["correct"] for s in result.samples] == [True, True, True, False, True, True]
    assert [s["rule"] for s in result.samples] == [
        "boxed",
        "option_value",
        "boxed",
        "answer_is",
        "boxed",
        "option_value",
    ]
    assert result.summary["accuracy"] == pytest.approx(5 / 6)
    prompt = result.samples[0]["prompt"]
    assert prompt.count("<|im_start|>user\n") == 3
    assert rows[0]["Problem"] in prompt and rows[1]["Problem"] in prompt
    assert "The answer is \\boxed{c}.<|im_end|>" in prompt  # exemplar 0's answer turn


def test_fewshot_from_separate_split(tokenizer, tmp_path):
    rows = read_jsonl(GSM8K_FILE)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[20:]))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    seen = []
    model = ScriptedModel(tokenizer, lambda prompt: seen.append(prompt) or "#### 0")
    config = EvalConfig(
        data=str(tmp_path), num_fewshot=1, fewshot_split="train", generation={"max_new_tokens": 8}
    )
    result = evaluate_model(model, tokenizer, config, show_progress=False)
    assert result.summary["n"] == 3 and [s["index"] for s in result.samples] == [0, 1, 2]
    assert all(rows[20]["question"] in p for p in seen)
    with pytest.raises(ValueError, match="needs a folder with files named after that split"):
        evaluate_model(
            model, tokenizer, EvalConfig(data=str(GSM8K_FILE), num_fewshot=1, fewshot_split="train")
        )


def test_too_few_rows_for_fewshot(tokenizer, tmp_path):
    small = tmp_path / "two.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(GSM8K_FILE)[:2]))
    with pytest.raises(ValueError, match="nothing left to score"):
        evaluate_model(ScriptedModel(tokenizer, str), tokenizer, EvalConfig(data=str(small), num_fewshot=2))


def test_end_to_end_on_tiny_random_qwen3(tokenizer, tmp_path):
    model = tiny_model(tokenizer=tokenizer)
    config = EvalConfig(
        task="gsm8k",
        data=str(GSM8K_FILE),
        limit=3,
        generation={"max_new_tokens": 6, "batch_size": 2, "thinking": False},
    )
    result = evaluate_model(model, tokenizer, config, output_dir=tmp_path, show_progress=False)
    summary = result.summary
    assert set(summary) == SUMMARY_KEYS and summary["n"] == 3
    assert 0.0 <= summary["ci_low"] <= summary["accuracy"] <= summary["ci_high"] <= 1.0
    assert summary["accuracy"] == sum(s["correct"] for s in result.samples) / 3
    assert summary["truncated_fraction"] == sum(s["truncated"] for s in result.samples) / 3
    assert 1 <= summary["mean_generated_tokens"] <= 6 and summary["tokens_per_second"] > 0
    for sample in result.samples:
        assert sample["prompt"].endswith(
            "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        )  # thinking disabled
        assert sample["generated_tokens"] <= 6
    assert len(read_jsonl(tmp_path / "samples.jsonl")) == 3


# ------------------------------------------------------------------------------------------- evaluate metric


def test_evaluate_metric_loads_offline_and_scores(monkeypatch, tmp_path):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    path = metric_path()
    assert Path(path, "resp_math_accuracy.py").is_file()

    metric = evaluate.load(path, cache_dir=str(tmp_path), keep_in_memory=True)
    predictions = [
        "<think>maybe 5</think>\n\\boxed{18}",
        "<think>the answer is 7",  # truncated inside the thinking block
        "The answer is 1,200 dollars.",
        "#### 3",
    ]
    references = ["18", "7", "Profit is 600*2=<<600*2=1200>>1200.\n#### 1,200", "4"]
    assert metric.compute(predictions=predictions, references=references, task="gsm8k") == {
        "accuracy": 0.5,
        "num_extracted": 3,
    }

    mathqa = evaluate.load(str(Path(path, "resp_math_accuracy.py")), "mathqa", keep_in_memory=True)
    scores = mathqa.compute(
        predictions=["\\boxed{c}", "The answer is 27.675", "answer: e", "no idea"],
        references=["c", "b", "a", "d"],
        options=["a ) 38 , b ) 27.675 , c ) 30 , d ) 5 , e ) 2"] * 4,
    )
    assert scores == {"accuracy": 0.5, "num_extracted": 3}
