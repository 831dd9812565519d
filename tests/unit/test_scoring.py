from __future__ import annotations

import pytest

from cot_patching.traces.scoring import parse_number, score_answer


@pytest.mark.parametrize("answer", [
    "18", "$18.00", "18.", "**18**", "`18`", "\\boxed{18}", "$\\boxed{18}$", "18 dollars", "$18 dollars.",
    "9 * 2 = 18", "x = $18", "18.0", " 18 ", "(18)", "+18", "18.000", "\\(18\\)",
])
def test_equivalent_forms_of_18_are_correct(answer):
    score = score_answer(answer, "18")
    assert score.correct, score
    assert score.rule == ("boxed" if "boxed" in answer else "numeric")
    assert score.normalized == "18"


@pytest.mark.parametrize("answer, gold", [
    ("1,000", "1000"), ("$1,234.50", "1234.5"), ("25%", "25"), ("-3", "-3"), ("0.5", "1/2"),
    ("51", 51.0), ("3/4", "0.75"), ("−7", "-7"),
])
def test_numeric_equivalences(answer, gold):
    assert score_answer(answer, gold).correct


@pytest.mark.parametrize("answer, gold", [
    ("17", "18"), ("18.01", "18"), ("180", "18"), ("1.8", "18"), ("-18", "18"), ("18/0", "18"),
    ("Janet makes $17 a day", "18"), ("Each of them had 1.8 cookies.", "18"), ("\\boxed{\\frac{109.50}{3}}", "34"),
])
def test_wrong_or_unclear_answers_are_incorrect(answer, gold):
    assert not score_answer(answer, gold).correct


def test_no_answer():
    score = score_answer(None, "5")
    assert not score.correct and score.rule == "no_answer"
    assert score_answer("**", "5").rule == "no_answer"


def test_string_rule_case_insensitive():
    score = score_answer("**Yes**.", "yes")
    assert score.correct and score.rule == "string"
    assert not score_answer("no", "yes").correct


def test_exactness_no_float_rounding():
    assert parse_number("0.1") + parse_number("0.2") == parse_number("0.3")
    assert not score_answer("0.30000000000000004", "0.3").correct


@pytest.mark.parametrize("answer, gold, value, rule", [
    ("The baker sold 76 more pastries than cakes.", "76", "76", "sentence"),   # svamp-chal-191 attempt 2
    ("5 marbles was lost.", "5", "5", "sentence"),                             # svamp-chal-352 attempt 1
    ("- He harvested 4 sacks of oranges per day.", "4", "4", "sentence"),      # svamp-chal-809 attempt 5
    ("Kelly will have 106 - 64 = 42 games left.", "42", "42", "equation"),     # svamp-chal-186 attempt 6
    ("Janet makes $18 a day", "18", "18", "sentence"),
    ("The total is 1,650 calories.", "1650", "1650", "sentence"),
    ("-32 children got on the bus.", "-32", "-32", "sentence"),
    ("7 apples", "7", "7", "numeric"),
    ("$18.00 per day", "18", None, None),
    ("18 dollars", "18", "18", "numeric"),
    ("25% of them", "25", "25", "sentence"),
    ("\\(\\boxed{\\frac{109.50}{3}}\\)", "36.5", "36.5", "boxed"),
    ("<30>", "30", "30", "numeric"),
])
def test_sentence_and_unit_answers_score_by_the_number_they_state(answer, gold, value, rule):
    score = score_answer(answer, gold)
    if value is None:
        assert score.determined
        return
    assert (score.correct, score.normalized, score.rule) == (True, value, rule)


@pytest.mark.parametrize("answer", [
    "<one token/number/string>",                   # the prompt template echoed (8 committed attempts)
    "The time it takes Tom to get back",           # a phrase with no number
    "\\(\\boxed{",                                  # cut off at the token limit
    "\\( \\boxed{750",                              # cut off inside the box: the number may be unfinished
    "$w + 1$",                                     # an expression
    "10x",                                         # a digit inside a word
    "18 and 19",                                   # two numbers
    "15.5 yards for 20 small and 8 large masks",   # three numbers
    "**",
])
def test_answers_with_no_determinable_number_are_unparsed_not_incorrect(answer):
    score = score_answer(answer, "18")
    assert not score.determined and score.rule in ("no_number", "no_answer") and score.normalized is None


def test_negative_control_a_wrong_sentence_answer_is_incorrect_and_determined():
    score = score_answer("The baker sold 75 more pastries than cakes.", "76")
    assert score.determined and not score.correct and score.rule == "sentence"
