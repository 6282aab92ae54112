"""Tests for prompt building and batched generation (scripted fake model and a tiny random Qwen3)."""

import logging

import pytest
from conftest import tiny_model, tiny_tokenizer
from scripted_model import ScriptedModel

from optimum_resp.generation import (
    GenerationSettings,
    build_prompt,
    end_token_ids,
    generate,
    supports_thinking_switch,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny_qwen3(tokenizer):
    return tiny_model(tokenizer=tokenizer)


# ------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"do_sample": True, "temperature": 0.0}, r"temperature must be a number in \(0.0"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"do_sample": "yes"}, "do_sample must be True or False"),
    ],
)
def test_settings_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**kwargs)


def test_settings_defaults_follow_qwen_thinking_recommendation():
    settings = GenerationSettings(temperature=0.0)  # greedy ignores temperature, so 0 is allowed
    assert (settings.do_sample, settings.thinking) == (False, True)
    assert GenerationSettings().to_dict()["top_k"] == 20
    assert (GenerationSettings().temperature, GenerationSettings().top_p) == (0.6, 0.95)


# ------------------------------------------------------------------------------------------- prompts


def test_build_prompt_thinking_switch_and_fewshot(tokenizer):
    assert supports_thinking_switch(tokenizer)
    thinking = build_prompt(tokenizer, "What is 2+3?", thinking=True)
    plain = build_prompt(tokenizer, "What is 2+3?", thinking=False)
    assert thinking == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    assert plain == thinking + "<think>\n\n</think>\n\n"

    shots = [("Q1?", "A1."), ("Q2?", "A2.")]
    prompt = build_prompt(tokenizer, "Q3?", fewshot=shots)
    expected_turns = [
        "<|im_start|>user\nQ1?<|im_end|>",
        "<|im_start|>assistant\nA1.<|im_end|>",
        "<|im_start|>user\nQ2?<|im_end|>",
        "<|im_start|>assistant\nA2.<|im_end|>",
        "<|im_start|>user\nQ3?<|im_end|>",
    ]
    positions = [prompt.index(turn) for turn in expected_turns]
    assert positions == sorted(positions)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_template_without_thinking_switch_ignores_flag():
    template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}[assistant]"
    tok = tiny_tokenizer(chat_template=template, name="no-switch")
    assert not supports_thinking_switch(tok)
    assert (
        build_prompt(tok, "hi", thinking=False)
        == build_prompt(tok, "hi", thinking=True)
        == "[user]hi[assistant]"
    )


def test_missing_chat_template_falls_back_and_warns_once(caplog):
    tok = tiny_tokenizer(chat_template=None, name="no-template-for-warning-test")
    with caplog.at_level(logging.WARNING, logger="optimum_resp.generation"):
        first = build_prompt(tok, "How many?", fewshot=[("One plus one?", "2")])
        second = build_prompt(tok, "Again?")
    assert first == "Question: One plus one?\nAnswer: 2\n\nQuestion: How many?\nAnswer:"
    assert second == "Question: Again?\nAnswer:"
    warnings = [r for r in caplog.records if "no chat template" in r.getMessage()]
    assert len(warnings) == 1


# ------------------------------------------------------------------------------------------- generate


def test_generate_cuts_at_end_of_turn_and_keeps_order(tokenizer):
    replies = {
        "short": "<think>\nhmm 1+1</think>\n\nThe answer is 2.",
        "a much longer prompt text": "Answer: 7<|im_end|>ignored tail",
        "mid": "no end token here, this reply is long enough to be truncated by the limit",
    }

    def script(prompt):
        return next(reply for key, reply in replies.items() if f"\n{key}<|im_end|>" in prompt)

    model = ScriptedModel(tokenizer, script)
    prompts = [build_prompt(tokenizer, key) for key in replies]
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    settings = GenerationSettings(max_new_tokens=40, batch_size=2)
    out = generate(model, tokenizer, prompts, settings, show_progress=False)

    assert [c.prompt for c in out] == prompts
    first, second, third = out
    assert first.text == replies["short"]
    assert first.token_ids[-1] == end_id and first.num_tokens == len(first.token_ids)
    assert first.num_tokens == len(tokenizer.encode(replies["short"], add_special_tokens=False)) + 1
    assert not first.truncated
    assert second.text == "Answer: 7"  # cut at the first <|im_end|>, the rest is dropped
    assert second.num_tokens == len("Answer: 7") + 1
    assert third.truncated and third.num_tokens == 40 and end_id not in third.token_ids
    assert third.text == replies["mid"][:40]
    assert out.stats.generated_tokens == first.num_tokens + second.num_tokens + 40
    assert out.stats.num_prompts == 3 and out.stats.tokens_per_second > 0

    # Longest prompt first, batches of 2, and left padding: pads (mask 0) only at the start of rows.
    assert [call["input_ids"].shape[0] for call in model.calls] == [2, 1]
    first_call = model.calls[0]
    assert tokenizer.decode(first_call["input_ids"][0]).endswith(prompts[1][-30:])
    mask = first_call["attention_mask"]
    assert mask[:, -1].all()
    assert (mask[1].cumsum(0) > 0).sum() == mask[1].sum()  # zeros form a prefix
    assert mask[1, 0] == 0
    assert first_call["config"].eos_token_id == end_token_ids(tokenizer, model)
    assert first_call["config"].do_sample is False
    assert tokenizer.padding_side == "right"  # restored


def test_generate_keeps_special_think_tags_and_strips_other_specials():
    tok = tiny_tokenizer(think_special=True, name="think-special")
    assert tok.convert_tokens_to_ids("<think>") in tok.all_special_ids
    reply = "<think>reason</think><|im_start|>\n\\boxed{3}"
    model = ScriptedModel(tok, lambda prompt: reply)
    (completion,) = generate(model, tok, [build_prompt(tok, "q")], GenerationSettings(max_new_tokens=64))
    assert completion.text == "<think>reason</think>\n\\boxed{3}"
    assert tok.convert_tokens_to_ids("<|im_start|>") in completion.token_ids  # ids are kept verbatim


def test_generate_pad_falls_back_to_eos_and_is_restored():
    tok = tiny_tokenizer(name="no-pad")
    tok.pad_token = None
    assert tok.pad_token is None
    model = ScriptedModel(tok, lambda prompt: "42")
    prompts = [build_prompt(tok, "short"), build_prompt(tok, "a longer question")]
    out = generate(
        model, tok, prompts, GenerationSettings(max_new_tokens=8, batch_size=2), show_progress=False
    )
    assert [c.text for c in out] == ["42", "42"]
    assert model.calls[0]["config"].pad_token_id == tok.eos_token_id
    assert model.calls[0]["input_ids"][1, 0].item() == tok.eos_token_id  # shorter (2nd, sorted) row: eos pads
    assert tok.pad_token is None


def test_sampling_settings_reach_generation_config(tokenizer):
    model = ScriptedModel(tokenizer, lambda prompt: "ok")
    settings = GenerationSettings(max_new_tokens=4, do_sample=True, temperature=0.7, top_p=0.8, top_k=5)
    generate(model, tokenizer, ["x"], settings, show_progress=False)
    config = model.calls[0]["config"]
    assert (config.do_sample, config.temperature, config.top_p, config.top_k) == (True, 0.7, 0.8, 5)
    assert config.max_new_tokens == 4 and config.use_cache


def test_empty_prompt_list(tokenizer):
    out = generate(ScriptedModel(tokenizer, lambda p: ""), tokenizer, [], GenerationSettings())
    assert list(out) == [] and out.stats.tokens_per_second == 0.0


# ------------------------------------------------------------------------------------------- tiny Qwen3


def test_batched_greedy_equals_one_by_one_on_random_qwen3(tokenizer, tiny_qwen3):
    questions = [
        "What is 2+2?",
        "A farmer has 17 goats and 3 times as many chickens. How many legs do they have in total?",
        "x",
        "Hi!",
        "Tomas has $85 and buys 3 notebooks at $7 each. How much is left?",
        "Name a prime.",
    ]
    prompts = [build_prompt(tokenizer, q, thinking=i % 2 == 0) for i, q in enumerate(questions)]
    single = [
        generate(
            tiny_qwen3,
            tokenizer,
            [p],
            GenerationSettings(max_new_tokens=24, batch_size=1),
            show_progress=False,
        )[0]
        for p in prompts
    ]
    for batch_size in (3, 6):
        batched = generate(
            tiny_qwen3, tokenizer, prompts, GenerationSettings(max_new_tokens=24, batch_size=batch_size)
        )
        assert [c.token_ids for c in batched] == [c.token_ids for c in single]
        assert [c.text for c in batched] == [c.text for c in single]
        assert batched.stats.generated_tokens == sum(c.num_tokens for c in batched)
    end_ids = set(end_token_ids(tokenizer, tiny_qwen3))
    assert len({tuple(c.token_ids) for c in single}) > 1  # different prompts give different continuations
    for c in single:
        assert c.num_tokens == len(c.token_ids) <= 24
        assert c.truncated == (not end_ids & set(c.token_ids))
        assert c.truncated == (c.num_tokens == 24 and c.token_ids[-1] not in end_ids)


def test_seeded_sampling_is_reproducible(tokenizer, tiny_qwen3):
    prompts = [build_prompt(tokenizer, "Count to three."), build_prompt(tokenizer, "Name a color.")]
    settings = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    first = generate(tiny_qwen3, tokenizer, prompts, settings, show_progress=False, seed=7)
    second = generate(tiny_qwen3, tokenizer, prompts, settings, show_progress=False, seed=7)
    other = generate(tiny_qwen3, tokenizer, prompts, settings, seed=8)
    assert [c.token_ids for c in first] == [c.token_ids for c in second]
    assert [c.token_ids for c in first] != [c.token_ids for c in other]
