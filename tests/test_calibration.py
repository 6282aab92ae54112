"""Calibration: prompts, traces from each source, SSGR selection, the generator interface."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import single_torch_thread, tiny_model, tiny_tokenizer
from scripted_model import ScriptedModel

from optimum_resp.calibration import (
    CalibrationPrompt,
    HFGenerator,
    Trace,
    TraceGenerator,
    as_prompts,
    build_traces,
    get_generator,
    load_traces,
    prompts_from_task,
    save_traces,
    select_by_difficulty,
    select_traces,
    trace_token_ids,
)
from optimum_resp.configuration_resp import RESPConfig
from optimum_resp.generation import Completion, GenerationSettings, generate
from optimum_resp.importance import build_examples

FIXTURES = Path(__file__).parent / "fixtures"


class FakeGenerator(TraceGenerator):
    """Answers from a script keyed by (call number, prompt text); records the settings it was given."""

    name = "fake"

    def __init__(self, script):
        self.script = script
        self.calls: list[GenerationSettings] = []
        self.seeds: list[int] = []

    def generate(self, model, tokenizer, prompts, settings, seed=0):
        self.calls.append(settings)
        self.seeds.append(seed)
        out = []
        for p in prompts:
            text, truncated = self.script(len(self.calls), p)
            out.append(Completion(p, text, [0] * (len(text) // 4 + 1), len(text) // 4 + 1, truncated))
        return out


def trace(n, truncated=False, correct=None):
    return Trace("q", "p", "c", n, truncated, None, correct)


def test_as_prompts_accepts_strings_dicts_and_objects():
    prompts = as_prompts(["a", {"question": "b", "gold": "3", "solution": "s"}, CalibrationPrompt("c")])
    assert [p.question for p in prompts] == ["a", "b", "c"]
    assert prompts[1].gold == "3" and prompts[1].solution == "s"
    with pytest.raises(ValueError, match="Calibration prompt 0 is a int"):
        as_prompts([3])
    # A question that is not text is refused, never turned into the prompt "None" or "7".
    for bad in (None, 7):
        with pytest.raises(ValueError, match=rf"prompts \[1\] are empty or not text \(1: {bad!r}\)"):
            as_prompts(["a", {"question": bad}])
        with pytest.raises(ValueError, match=r"prompts \[0\] are empty or not text"):
            as_prompts([CalibrationPrompt(bad), "b"])


def test_calibration_rows_without_question_text_are_refused_or_skipped(tmp_path):
    path = tmp_path / "calib.jsonl"
    rows = [{"question": q, "answer": "#### 1"} for q in ("What is 1+1?", None, "", "What is 3+3?")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=rf"{path}, line 2: field 'question' is null; 2 of 4 rows"):
        prompts_from_task("gsm8k", str(path))
    prompts = prompts_from_task("gsm8k", str(path), skip_invalid_rows=True)
    assert sorted(p.question.split("\n")[0] for p in prompts) == ["What is 1+1?", "What is 3+3?"]
    with pytest.raises(ValueError, match="No calibration prompts"):
        as_prompts([])


def test_traces_round_trip_atomically(tmp_path):
    traces = [Trace("q1", "p1", "c1<|im_end|>", 5, False, "3", True), Trace("q2", "p2", "c2", 9, True)]
    save_traces(traces, tmp_path / "t" / "traces.jsonl")
    assert load_traces(tmp_path / "t" / "traces.jsonl") == traces
    assert [p.name for p in (tmp_path / "t").iterdir()] == ["traces.jsonl"]


def test_prompts_from_a_local_gsm8k_file_are_shuffled_with_gold_and_solution():
    a = prompts_from_task("gsm8k", str(FIXTURES / "gsm8k_sample.jsonl"), limit=5, seed=0)
    b = prompts_from_task("gsm8k", str(FIXTURES / "gsm8k_sample.jsonl"), limit=5, seed=0)
    c = prompts_from_task("gsm8k", str(FIXTURES / "gsm8k_sample.jsonl"), limit=5, seed=1)
    assert a == b and [p.question for p in a] != [p.question for p in c]
    for p in a:
        assert "\\boxed{}" in p.question  # the harness's prompt, so calibration matches evaluation
        assert p.solution.rstrip().endswith(f"#### {p.gold}")
    mathqa = prompts_from_task("mathqa", str(FIXTURES / "mathqa_sample.jsonl"), limit=3)
    assert all(p.gold in "abcde" and "Options" in p.question for p in mathqa)


def test_self_traces_judge_correctness_and_carry_the_end_token():
    tokenizer = tiny_tokenizer()
    prompts = prompts_from_task("gsm8k", str(FIXTURES / "gsm8k_sample.jsonl"), limit=4, seed=0)
    golds = {p.question: p.gold for p in prompts}

    def script(call, prompt):
        question = next(q for q in golds if q in prompt)
        right = prompts.index(next(p for p in prompts if p.question == question)) % 2 == 0
        return (
            f"<think>\nsome steps\n</think>\n\nThe answer is \\boxed{{{golds[question] if right else 1}}}.",
            False,
        )

    gen = FakeGenerator(script)
    config = RESPConfig(generation={"max_new_tokens": 64, "temperature": 0.7})
    traces = build_traces(None, tokenizer, prompts, config.calibration, gen, task="gsm8k")
    assert [t.correct for t in traces] == [True, False, True, False]
    assert all(t.completion.endswith("<|im_end|>") for t in traces)
    assert all(t.prompt.endswith("<|im_start|>assistant\n") for t in traces)
    assert gen.calls[0].do_sample and gen.calls[0].temperature == 0.7 and gen.calls[0].max_new_tokens == 64
    filtered = build_traces(
        None, tokenizer, prompts, RESPConfig(filter_correct=True).calibration, gen, task="gsm8k"
    )
    assert len(filtered) == 2 and all(t.correct for t in filtered)


def test_gold_traces_use_the_human_solution():
    tokenizer = tiny_tokenizer()
    prompts = prompts_from_task("gsm8k", str(FIXTURES / "gsm8k_sample.jsonl"), limit=3)
    traces = build_traces(
        None, tokenizer, prompts, RESPConfig(calibration_source="gold").calibration, FakeGenerator(None)
    )
    assert [t.completion for t in traces] == [p.solution + "<|im_end|>" for p in prompts]


def test_selection_filters():
    traces = [
        trace(n, truncated=n == 100, correct=n % 20 == 0) for n in (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
    ]
    assert len(select_traces(traces, RESPConfig().calibration)) == 10
    assert [t.num_tokens for t in select_traces(traces, RESPConfig(keep_truncated=False).calibration)][
        -1
    ] == 90
    assert [t.num_tokens for t in select_traces(traces, RESPConfig(filter_correct=True).calibration)] == [
        20,
        40,
        60,
        80,
        100,
    ]
    middle = select_traces(traces, RESPConfig(selection_length_quantiles=[0.25, 0.75]).calibration)
    assert [t.num_tokens for t in middle] == [40, 50, 60, 70]
    with pytest.raises(ValueError, match="All 2 calibration traces hit max_new_tokens"):
        select_traces([trace(5, True), trace(6, True)], RESPConfig(keep_truncated=False).calibration)
    with pytest.raises(ValueError, match="filter_correct removed every trace"):
        select_traces([trace(5, correct=False)], RESPConfig(filter_correct=True).calibration)


def test_difficulty_selection_keeps_the_prompts_the_model_fails_most():
    tokenizer = tiny_tokenizer()
    prompts = prompts_from_task("gsm8k", str(FIXTURES / "gsm8k_sample.jsonl"), limit=4, seed=0)
    solved_times = {0: 4, 1: 0, 2: 2, 3: 3}  # prompt index -> how many of 4 samples are right

    def script(call, prompt):
        i = next(i for i, p in enumerate(prompts) if p.question in prompt)
        right = call <= solved_times[i]
        return f"\\boxed{{{prompts[i].gold if right else -1}}}", False

    gen = FakeGenerator(script)
    config = RESPConfig(selection_difficulty_samples=4, selection_keep_fraction=0.5)
    kept, rates = select_by_difficulty(None, tokenizer, prompts, config.calibration, gen, "gsm8k")
    assert [prompts.index(p) for p in kept] == [1, 2] and rates == [1.0, 0.5]
    assert len(gen.calls) == 4 and len(set(gen.seeds)) == 4 and all(s.do_sample for s in gen.calls)


def test_generator_interface():
    assert isinstance(get_generator("hf"), HFGenerator)
    assert get_generator("auto").name == "auto"
    with pytest.raises(ValueError, match=r"Unknown generator 'tgi'; choose one of \['auto', 'hf', 'vllm'\]"):
        get_generator("tgi")
    tokenizer = tiny_tokenizer()
    model = ScriptedModel(tokenizer, lambda prompt: "<think>\nhm\n</think>\n\n\\boxed{4}")
    settings = GenerationSettings(max_new_tokens=40)
    via_interface = get_generator("hf").generate(model, tokenizer, ["p1", "p22"], settings)
    direct = generate(model, tokenizer, ["p1", "p22"], settings, show_progress=False)
    assert via_interface == list(direct)


def test_hf_generator_runs_a_real_model():
    tokenizer = tiny_tokenizer()
    with single_torch_thread():
        model = tiny_model(tokenizer=tokenizer)
        out = HFGenerator().generate(
            model, tokenizer, ["hello", "a longer prompt"], GenerationSettings(max_new_tokens=5)
        )
    assert len(out) == 2 and all(1 <= c.num_tokens <= 5 for c in out)
    assert torch.is_tensor(torch.tensor(out[0].token_ids))


# ------------------------------------------------------------------------------------ token ids end to end


def _fed_and_generated(model: ScriptedModel) -> list[list[int]]:
    """Each prompt's ids as the model was fed them (padding removed), followed by the ids it generated."""
    rows = []
    for call in model.calls:
        for row, mask, generated in zip(
            call["input_ids"].tolist(), call["attention_mask"].tolist(), call["generated"]
        ):
            rows.append([t for t, m in zip(row, mask) if m] + generated)
    return rows


def _scored(tokenizer, traces) -> list[list[int]]:
    return [e["input_ids"] for e in build_examples(*trace_token_ids(tokenizer, traces))]


def test_scored_ids_are_the_generated_ids_with_a_tokenizer_that_adds_bos():
    tokenizer = tiny_tokenizer(bos=True, name="adds-bos")
    model = ScriptedModel(tokenizer, lambda prompt: "<think>\n2+3=5\n</think>\n\n\\boxed{5}")
    config = RESPConfig(generation={"max_new_tokens": 64})
    traces = build_traces(
        model, tokenizer, as_prompts(["What is 2+3?", "And 4+4?"]), config.calibration, HFGenerator()
    )
    fed = _fed_and_generated(model)
    assert all(
        row[0] == tokenizer.bos_token_id for row in fed
    )  # the template has no BOS: the tokenizer adds it
    assert sorted(_scored(tokenizer, traces)) == sorted(fed)
    # Tokenizing the text again (what a trace saved without ids falls back to) loses the BOS the model saw.
    old = [dataclasses.replace(t, prompt_ids=None, completion_ids=None) for t in traces]
    assert all(row[0] != tokenizer.bos_token_id for row in _scored(tokenizer, old))


def test_scored_ids_are_the_generated_ids_when_bpe_merges_across_the_boundary():
    # ":" + " " and " " + "7" merge: the joined text "Answer: 7" would tokenize across the prompt/completion
    # boundary, and the completion " 7" alone as one token, while the model generated " " and "7" apart.
    merges = [(":", "Ġ"), ("Ġ", "7")]
    tokenizer = tiny_tokenizer(chat_template=None, merges=merges, name="merges")
    space, seven = tokenizer.convert_tokens_to_ids(["Ġ", "7"])
    model = ScriptedModel(tokenizer, lambda prompt: [space, seven])
    config = RESPConfig(generation={"max_new_tokens": 8})
    (trace,) = build_traces(model, tokenizer, as_prompts(["What is 3+4?"]), config.calibration, HFGenerator())
    assert trace.prompt.endswith("Answer:") and trace.completion == " 7<|im_end|>"
    assert _scored(tokenizer, [trace]) == _fed_and_generated(model)
    assert trace.completion_ids == [space, seven, tokenizer.eos_token_id]
    old = dataclasses.replace(trace, prompt_ids=None, completion_ids=None)
    assert old.token_ids(tokenizer)[1] == tokenizer.convert_tokens_to_ids(["Ġ7", "<|im_end|>"])


def test_traces_saved_without_ids_load_and_score_their_text_as_before(tmp_path):
    tokenizer = tiny_tokenizer()
    fresh = Trace(
        "q", "<|im_start|>user\nq<|im_end|>\n", "ok<|im_end|>", 3, False, prompt_ids=[1], completion_ids=[2]
    )
    path = tmp_path / "traces.jsonl"
    save_traces([fresh], path)
    assert load_traces(path) == [fresh] and fresh.token_ids(tokenizer) == ([1], [2])
    # A line written before traces kept their ids (the keys of the version that wrote run folders until now).
    old_line = {k: v for k, v in fresh.to_dict().items() if k not in ("prompt_ids", "completion_ids")}
    path.write_text(json.dumps(old_line) + "\n")
    (old,) = load_traces(path)
    assert old.prompt_ids is None and old.completion_ids is None
    prompt_ids, completion_ids = old.token_ids(tokenizer)
    assert prompt_ids == tokenizer(old.prompt, add_special_tokens=False)["input_ids"]
    assert completion_ids == tokenizer(old.completion, add_special_tokens=False)["input_ids"]
    assert completion_ids == tokenizer.convert_tokens_to_ids(["o", "k", "<|im_end|>"])


def test_gold_and_text_traces_carry_their_tokens():
    tokenizer = tiny_tokenizer(bos=True, name="gold-bos")
    prompts = prompts_from_task("gsm8k", str(FIXTURES / "gsm8k_sample.jsonl"), limit=2, seed=0)
    gold = build_traces(
        None, tokenizer, prompts, RESPConfig(calibration_source="gold").calibration, HFGenerator()
    )
    for t, p in zip(gold, prompts):
        assert t.prompt_ids[0] == tokenizer.bos_token_id  # prompted as a generator would prompt it
        assert t.completion_ids == tokenizer(p.solution, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
    text = build_traces(
        None,
        tokenizer,
        prompts,
        RESPConfig(calibration_source="text", loss="full").calibration,
        HFGenerator(),
    )
    assert all(t.prompt_ids == [] for t in text)
    assert text[0].completion_ids == tokenizer(prompts[0].question, add_special_tokens=False)["input_ids"]
