"""Hand-written completions exercising the numeric (GSM8K) and option-letter (MathQA) answer extraction."""

import pytest

from optimum_resp.evaluation.extraction import (
    extract_choice_answer,
    extract_gsm8k_gold,
    extract_numeric_answer,
    find_boxed,
    match_option_value,
    normalize_choice,
    normalize_number,
    numbers_equal,
    option_value,
    parse_mathqa_options,
    split_thinking,
)

# (completion, expected answer, expected rule)
NUMERIC_CASES = [
    # --- boxed
    ("So the total is \\boxed{42}.", "42", "boxed"),
    ("First \\boxed{12} was wrong; corrected: \\boxed{15}.", "15", "boxed"),
    ("\\boxed{\\frac{3}{4}}", "0.75", "boxed"),
    ("The result is $\\boxed{\\$1,250}$ dollars.", "1250", "boxed"),
    ("\\boxed{18 \\text{ eggs}}", "18", "boxed"),
    ("\\boxed{x = 7}", "7", "boxed"),
    ("\\boxed{-3.50}", "-3.5", "boxed"),
    ("nested \\boxed{\\text{{12}}} done", "12", "boxed"),
    ("\\boxed{1{,}000}", "1000", "boxed"),
    ("\\boxed{} empty box but the answer is 9", "9", "answer_is"),
    ("\\fbox{64}", "64", "boxed"),
    ("boxed wins over hash: #### 5 and \\boxed{6}", "6", "boxed"),
    # --- ####
    ("Janet has 3 + 4 = 7 apples.\n#### 7", "7", "hash"),
    ("#### 1,234,567", "1234567", "hash"),
    ("#### $45.00", "45", "hash"),
    ("#### 3\nmore text 99", "3", "hash"),
    # --- the answer is
    ("Adding gives 10 and 20. The answer is 30.", "30", "answer_is"),
    ("The final answer is: **$2,400**", "2400", "answer_is"),
    ("**Final Answer:** 12 kilograms", "12", "answer_is"),
    ("Answer: -8 degrees", "-8", "answer_is"),
    ("I think the answer is 5, then 6 more are added... so the answer is 11 apples.", "11", "answer_is"),
    ("The answer is 25% of the class, i.e. 7 students", "25", "answer_is"),
    ("So the answer is 5 + 6 = 11 apples. Then 3 more.", "11", "answer_is"),
    # --- last number
    ("She buys 4 packs of 6, which is 24 cookies.", "24", "last_number"),
    ("He pays $1,050.50 in total.", "1050.5", "last_number"),
    ("It is 0.5 hours", "0.5", "last_number"),
    ("The temperature fell to -12.", "-12", "last_number"),
    ("Pages 3-5 were read", "5", "last_number"),
    ("The cost is 7.00 dollars", "7", "last_number"),
    ("So 3/4 of the class", "0.75", "last_number"),
    ("3 / 8 + 2 / 8 = 5 / 8", "0.625", "last_number"),
    ("on 1/2/2020 she had 12 cats", "12", "last_number"),
    ("no digits at all here", None, "no_answer"),
    # --- thinking block handling
    ("<think>Maybe 13? No, 14.</think>\nThe answer is 15.", "15", "answer_is"),
    ("<think>I will compute 2*3=6 and 6+1=7.</think>\n\nShe has 7 marbles.", "7", "last_number"),
    ("<think>the answer is 100</think>\n\nI am not sure.", None, "no_answer"),
    ("<think>\\boxed{100}</think>\nSo we get 101", "101", "last_number"),
    ("<think>Let me count 1, 2, 3, 4 and keep go", None, "unclosed_think"),
    ("<think>Long reasoning... so \\boxed{88} hmm wait let me re", "88", "boxed_unclosed_think"),
    ("Reasoning opened in the prompt: 5 + 5 = 10 and th", None, "unclosed_think"),
    ("reasoning 4 + 4 = 8</think>\n\nThe answer is 8.", "8", "answer_is"),
    ("<think>a</think><think>b 3</think> final 4", "4", "last_number"),
    # A check after the answer sentence, on the same line, is not the answer (even when it disagrees).
    ("</think>\n\nThe answer is 12. (Check: 4+8=13.)", "12", "answer_is"),
    ("</think>\n\nThe answer is 12. (Check: 3*4=12.)", "12", "answer_is"),
    ("</think>\n\nSo the answer is 7 (check: 10-3=7, and 7*2=14).", "7", "answer_is"),
    ("</think>\n\nThe final answer is: 42; check: 6*7=41.", "42", "answer_is"),
    ("</think>\n\nThe answer is $1,200. (Check: 400*3=1300)", "1200", "answer_is"),
    ("</think>\n\nThe answer is -4. Check: 2-6=-5.", "-4", "answer_is"),
    # ... while a decimal point, thousands marks and a stated sum stay inside the answer.
    ("</think>\n\nThe answer is 3.5 liters. (Check: 7/2=3.4)", "3.5", "answer_is"),
    ("</think>\n\nThe answer is 1,234,567.", "1234567", "answer_is"),
    ("</think>\n\nThe answer is (12). (Check: 3*4=13)", "12", "answer_is"),
]


@pytest.mark.parametrize(("completion", "expected", "rule"), NUMERIC_CASES)
def test_numeric_extraction(completion, expected, rule):
    think_open = completion.startswith("Reasoning opened in the prompt")
    result = extract_numeric_answer(completion, think_open=think_open)
    assert (result.answer, result.rule) == (expected, rule)


def test_think_open_flag_changes_the_outcome():
    text = "2 + 2 is 4, then"
    assert extract_numeric_answer(text).answer == "4"
    assert extract_numeric_answer(text, think_open=True).rule == "unclosed_think"
    assert extract_numeric_answer(text + "</think>The answer is 4.", think_open=True).answer == "4"


def test_extraction_records_span_for_audit():
    result = extract_numeric_answer("blah\n#### 1,000 dollars")
    assert result.span == "#### 1,000 dollars"
    assert result.to_dict() == {"answer": "1000", "rule": "hash", "span": "#### 1,000 dollars"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1,234", "1234"),
        ("$5", "5"),
        ("\\$5.50", "5.5"),
        ("-7", "-7"),
        ("−7", "-7"),
        ("12.000", "12"),
        ("45%", "45"),
        ("3/4", "0.75"),
        ("\\dfrac{1}{8}", "0.125"),
        ("-\\frac{1}{2}", "-0.5"),
        ("1/3", "0.333333333"),
        ("0.0", "0"),
        (".5", "0.5"),
        ("100", "100"),
        (18, "18"),
        (2.50, "2.5"),
        ("eighteen", None),
        ("", None),
    ],
)
def test_normalize_number(raw, expected):
    assert normalize_number(raw) == expected


def test_numbers_equal_uses_tolerance_and_rejects_none():
    assert numbers_equal("18", "18.0")
    assert numbers_equal("0.333333333", "0.3333333333")
    assert numbers_equal("1,000", "1000")
    assert not numbers_equal("18", "18.1")
    assert not numbers_equal(None, "0")
    assert not numbers_equal("abc", "0")


def test_find_boxed_handles_nesting_and_brace_free_form():
    assert find_boxed("\\boxed{\\frac{1}{2}} and \\boxed 7 and \\boxed{a{b{c}}}") == [
        "\\frac{1}{2}",
        "7",
        "a{b{c}}",
    ]
    assert find_boxed("\\boxed{unterminated") == []


def test_split_thinking_states():
    assert split_thinking("<think>x</think>y").state == "closed"
    assert split_thinking("<think>x</think>y").answer == "y"
    assert split_thinking("<think>x").state == "unclosed"
    assert split_thinking("x", think_open=True).state == "unclosed"
    assert split_thinking("plain").answer == "plain"


def test_gsm8k_gold():
    assert extract_gsm8k_gold("She has 2*3=<<2*3=6>>6 apples.\n#### 6") == "6"
    assert extract_gsm8k_gold("x\n#### 1,500") == "1500"
    assert extract_gsm8k_gold("x\n#### -4") == "-4"
    with pytest.raises(ValueError, match="####"):
        extract_gsm8k_gold("no marker 5")
    with pytest.raises(ValueError, match="no number"):
        extract_gsm8k_gold("#### none")


# ------------------------------------------------------------------------------------------------ MathQA

OPTIONS = "a ) 38 , b ) 27.675 , c ) 30 , d ) 5 , e ) 2"

CHOICE_CASES = [
    ("\\boxed{c}", "c", "boxed"),
    ("\\boxed{(C)}", "c", "boxed"),
    ("\\boxed{\\text{D}}", "d", "boxed"),
    ("\\boxed{b ) 27.675}", "b", "boxed"),
    ("First \\boxed{a}, no: \\boxed{e}", "e", "boxed"),
    ("\\boxed{30}", "c", "boxed_value"),
    ("\\boxed{27.68}", "b", "boxed_value"),
    ("The answer is (c).", "c", "answer_is"),
    ("the answer is d", "d", "answer_is"),
    ("Answer: c", "c", "answer_is"),
    ("**Answer: B**", "b", "answer_is"),
    ("So the correct option is e.", "e", "answer_is"),
    ("The answer is B because 27.675 is closest.", "b", "answer_is"),
    ("Option c is correct.", "c", "answer_is"),
    ("answer : a ) 38", "a", "answer_is"),
    ("The answer is a bit tricky: 30.", "c", "option_value"),
    ("c", "c", "lone_letter"),
    ("(D)", "d", "lone_letter"),
    ("  e.  ", "e", "lone_letter"),
    ("b ) 27.675", "b", "lone_letter"),
    ("a) First, the speed is 38 km per hour, so we need 30 more.\nDone.", "c", "option_value"),
    ("Speed times time gives 38 km.", "a", "option_value"),
    ("The answer is 5.", "d", "option_value"),
    ("Total: 1000", None, "no_option_match"),
    ("It equals 30 / 1 exactly", "c", "option_value"),
    ("I cannot decide.", None, "no_answer"),
    ("<think>answer is (a)</think>\n\nThe answer is (d).", "d", "answer_is"),
    ("<think>it is 38 so a</think>\nd", "d", "lone_letter"),
    ("<think>option a looks right but I need to chec", None, "unclosed_think"),
    ("<think>so \\boxed{E} wait", "e", "boxed_unclosed_think"),
    ("<think>so \\boxed{30} wait", "c", "boxed_unclosed_think"),
]


@pytest.mark.parametrize(("completion", "expected", "rule"), CHOICE_CASES)
def test_choice_extraction(completion, expected, rule):
    result = extract_choice_answer(completion, OPTIONS)
    assert (result.answer, result.rule) == (expected, rule)


def test_choice_without_options_cannot_value_match():
    assert extract_choice_answer("The result is 30.").answer is None
    assert extract_choice_answer("The result is 30.", OPTIONS).answer == "c"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (OPTIONS, {"a": "38", "b": "27.675", "c": "30", "d": "5", "e": "2"}),
        (
            "a ) rs . 1,200 , b ) rs . 1,500 , c ) 2 / 3 , d ) none of these , e ) 12 %",
            {"a": "rs . 1,200", "b": "rs . 1,500", "c": "2 / 3", "d": "none of these", "e": "12 %"},
        ),
        ("['a ) 1', 'b ) 2', 'c ) 3', 'd ) 4', 'e ) 5']", {"a": "1", "b": "2", "c": "3", "d": "4", "e": "5"}),
        ("(A) 10 (B) 20 (C) 30 (D) 40 (E) 50", {"a": "10", "b": "20", "c": "30", "d": "40", "e": "50"}),
        (["a ) 38", "b ) 27.675", "c ) 30"], {"a": "38", "b": "27.675", "c": "30"}),
        (["7", "8", "9", "10", "11"], {"a": "7", "b": "8", "c": "9", "d": "10", "e": "11"}),
        ({"A": "1", "b": " 2 "}, {"a": "1", "b": "2"}),
    ],
)
def test_parse_mathqa_options(options, expected):
    assert parse_mathqa_options(options) == expected


def test_parse_mathqa_options_rejects_garbage():
    with pytest.raises(ValueError, match="Cannot parse MathQA options"):
        parse_mathqa_options("thirty-eight or so")


def test_option_values_and_matching():
    assert option_value("rs . 1,200") == 1200
    assert option_value("2 / 3") == pytest.approx(2 / 3)
    assert option_value("none of these") is None
    options = parse_mathqa_options("a ) rs . 1,200 , b ) 2 / 3 , c ) none , d ) 12 % , e ) 0.67")
    assert match_option_value("1200", options) == "a"
    assert match_option_value("0.6667", options) == "b"  # closer to 2/3 than to 0.67
    assert match_option_value("12", options) == "d"
    assert match_option_value("13", options) is None
    assert match_option_value(None, options) is None
    assert match_option_value("5", {"a": "5", "b": "5.0"}) is None  # a tie is ambiguous


def test_normalize_choice():
    assert normalize_choice("C") == "c"
    assert normalize_choice(" (e) ") == "e"
    with pytest.raises(ValueError, match="a-e"):
        normalize_choice("f")
