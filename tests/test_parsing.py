from __future__ import annotations

from cot_patching.parsing import parse_trace, select_steps

PLAIN = "Step 1: 16 - 3 - 4 = 9 eggs.\nStep 2: 9 * 2 = 18 dollars.\n\nFinal Answer: 18\n"


def test_plain_trace_steps_and_answer():
    parsed = parse_trace(PLAIN)
    assert parsed.parse_ok and parsed.strict_format_ok
    assert [s.text for s in parsed.steps] == ["Step 1: 16 - 3 - 4 = 9 eggs.", "Step 2: 9 * 2 = 18 dollars."]
    assert parsed.final_answer == "18"
    for step in parsed.steps:
        assert PLAIN[step.char_start:step.char_end] == step.text
    assert [s.step_idx for s in parsed.steps] == [1, 2]


def test_step_ends_before_final_answer_on_same_line():
    text = "Step 1: 2 + 2 = 4 Final Answer: 4"
    parsed = parse_trace(text)
    assert parsed.steps[0].text == "Step 1: 2 + 2 = 4"
    assert parsed.final_answer == "4"


def test_markdown_decoration_accepted_by_default():
    text = "**Step 1:** Add 2 and 3.\n\n### Step 2: 5 * 2 = 10\n\n**Final Answer:** 10"
    parsed = parse_trace(text)
    assert parsed.parse_ok
    assert not parsed.strict_format_ok
    assert parsed.steps[0].text == "**Step 1:** Add 2 and 3."
    assert parsed.steps[1].text == "### Step 2: 5 * 2 = 10"
    assert parsed.final_answer == "10"
    assert text[parsed.final_marker_start:].startswith("**Final Answer")


def test_strict_mode_rejects_decoration():
    text = "**Step 1:** Add 2 and 3.\n**Final Answer:** 5"
    assert not parse_trace(text, strict=True).steps
    assert not parse_trace(text, strict=True).parse_ok


def test_first_final_answer_wins_and_multiline_header():
    text = "Step 1: x\nFinal Answer:\n 7\nFinal Answer: 8"
    parsed = parse_trace(text)
    assert parsed.final_answer == "7"


def test_unparseable_trace_is_data_not_error():
    for text in ["", "The answer is 5.", "Step 1: 3+4", "Final Answer: 3"]:
        parsed = parse_trace(text)
        assert not parsed.parse_ok


def test_step_not_at_line_start_is_not_a_header():
    parsed = parse_trace("We do Step 1: nothing\nFinal Answer: 1")
    assert parsed.steps == []


def test_select_steps_substantive_and_late():
    text = "Step 1: Let's think.\nStep 2: 3 + 4 = 7\nStep 3: so 7 apples\nFinal Answer: 7\nStep 4: extra"
    parsed = parse_trace(text)
    assert select_steps(parsed) == (2, 3)


def test_select_steps_without_digits_uses_first_nonempty():
    parsed = parse_trace("Step 1:\nStep 2: think hard\nFinal Answer: yes")
    assert select_steps(parsed) == (2, 2)


def test_hyphenated_words_are_not_arithmetic():
    parsed = parse_trace("Step 1: think step-by-step and/or carefully\nStep 2: 3 - 1\nFinal Answer: 2")
    assert select_steps(parsed) == (2, 2)
    parsed = parse_trace("Step 1: twelve minus five - that is seven\nFinal Answer: 7")
    assert select_steps(parsed) == (1, 1)
