from __future__ import annotations

import pytest

from cot_patching.scoring import parse_number, score_answer


@pytest.mark.parametrize("answer", [
    "18", "$18.00", "18.", "**18**", "`18`", "\\boxed{18}", "$\\boxed{18}$", "18 dollars", "$18 dollars.",
    "9 * 2 = 18", "x = $18", "18.0", " 18 ", "(18)", "+18", "18.000", "\\(18\\)",
])
def test_equivalent_forms_of_18_are_correct(answer):
    score = score_answer(answer, "18")
    assert score.correct, score
    assert score.rule == "numeric"
    assert score.normalized == "18"


@pytest.mark.parametrize("answer, gold", [
    ("1,000", "1000"), ("$1,234.50", "1234.5"), ("25%", "25"), ("-3", "-3"), ("0.5", "1/2"),
    ("51", 51.0), ("3/4", "0.75"), ("−7", "-7"),
])
def test_numeric_equivalences(answer, gold):
    assert score_answer(answer, gold).correct


@pytest.mark.parametrize("answer, gold", [
    ("17", "18"), ("18.01", "18"), ("180", "18"), ("1.8", "18"), ("18 and 19", "18"),
    ("Janet makes $18 a day", "18"), ("-18", "18"), ("18/0", "18"),
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
