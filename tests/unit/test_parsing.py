from __future__ import annotations

import pytest

from cot_patching.traces.parsing import parse_trace, select_steps

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
    parsed = parse_trace("Step 1: think\nStep 2: think hard\nFinal Answer: yes")
    assert select_steps(parsed) == (1, 2)


def test_hyphenated_words_are_not_arithmetic():
    parsed = parse_trace("Step 1: think step-by-step and/or carefully\nStep 2: 3 - 1\nFinal Answer: 2")
    assert select_steps(parsed) == (2, 2)
    parsed = parse_trace("Step 1: twelve minus five - that is seven\nFinal Answer: 7")
    assert select_steps(parsed) == (1, 1)


def test_empty_step_is_not_a_step():
    for text in ["Step 1: 3 + 4 = 7\nStep 2: Final Answer: 7", "Step 1: 3 + 4 = 7\n**Step 2:**\n**Final Answer:** 7",
                 "Step 1:\nStep 2: 3 + 4 = 7\nFinal Answer: 7"]:
        parsed = parse_trace(text)
        assert [s.text for s in parsed.steps] == ["Step 1: 3 + 4 = 7"] or [s.text for s in parsed.steps] == [
            "Step 2: 3 + 4 = 7"], parsed.steps
        assert [s.step_idx for s in parsed.steps] == [1]
        assert select_steps(parsed) == (1, 1)


def test_nothing_after_the_final_answer_line_is_a_step():
    # gsm8k-test-0484 attempt 5 (gsm8k-sample2 h100): a Python block repeating the steps after the answer
    text = ("### Step 1: 60 oranges\n### Step 2: 2/5 * 60 = 24\n### Step 3: 24 * 10 = 240\n\n### Final Answer: 240\n"
            "```python\n# Step 1: Calculate\ntotal = 60\n# Step 2: eaten\n# Step 3: money\n```")
    parsed = parse_trace(text)
    assert [s.step_idx for s in parsed.steps] == [1, 2, 3]
    assert parsed.steps[-1].text == "### Step 3: 24 * 10 = 240"
    assert select_steps(parsed) == (1, 3)


@pytest.mark.parametrize("line, header", [
    ("   Step 1: 3 + 4 = 7", "Step 1:"),
    ("   - Step 1: 3 + 4 = 7", "- Step 1:"),
    ("\t* **Step 1:** 3 + 4 = 7", "* **Step 1:**"),
    ("1. **Step 1: add** 3 + 4 = 7", "1. **Step 1:"),
    ("> Step 1: 3 + 4 = 7", "> Step 1:"),
    ("  ### Step 1: 3 + 4 = 7", "### Step 1:"),
])
def test_step_span_starts_at_first_non_whitespace_of_its_header_line(line, header):
    text = f"Intro.\n{line}\n\nFinal Answer: 7"
    parsed = parse_trace(text)
    (step,) = parsed.steps
    assert step.text.startswith(header) and step.text.endswith("7")
    assert not text[step.char_start].isspace() and not text[step.char_end - 1].isspace()
    assert not parsed.strict_format_ok or line.startswith("Step")


def test_step_ends_before_the_next_items_marker():
    # svamp-chal-809 attempt 5 (svamp-sample2 h100): an indented step followed by `2. **Final Answer:**`
    text = ("1. **Determine the sacks per day:**\n   - 56 sacks in 14 days.\n\n   Step 2: Perform the division\n\n"
            "   56 / 14 = 4\n\n2. **Final Answer:**\n   - He harvested 4 sacks of oranges per day.\n")
    parsed = parse_trace(text)
    (step,) = parsed.steps
    assert step.text == "Step 2: Perform the division\n\n   56 / 14 = 4"
    assert parsed.final_answer == "- He harvested 4 sacks of oranges per day."
    assert text[parsed.final_marker_start:].startswith("2. **Final Answer:**")
    two_steps = parse_trace("1. **Step 1: add**\n   3 + 4 = 7\n2. **Step 2: double**\n   14\nFinal Answer: 14")
    assert [s.text for s in two_steps.steps] == ["1. **Step 1: add**\n   3 + 4 = 7", "2. **Step 2: double**\n   14"]


@pytest.mark.parametrize("text, answer", [
    ("Step 1: 3 + 4 = 7\n### Final Answer\n7", "7"),
    ("Step 1: 3 + 4 = 7\n**Final Answer**\n\n**7 apples**", "**7 apples**"),
    ("Step 1: 3 + 4 = 7\nFinal answer: 7", "7"),
    ("Step 1: 3 + 4 = 7\nFINAL ANSWER: 7", "7"),
    ("Step 1: 3 + 4 = 7\n**Final Answer:**\n\n  7 apples  \n", "7 apples"),
])
def test_final_answer_variants_parse_and_are_not_strict(text, answer):
    parsed = parse_trace(text)
    assert parsed.parse_ok and parsed.final_answer == answer
    assert parsed.strict_format_ok == ("Final Answer:" in text)  # the seed regex matches `**Final Answer:**` too


def test_the_final_answer_in_prose_is_not_a_header():
    parsed = parse_trace("Step 1: 3 + 4 = 7\nSo the final answer is 7.")
    assert parsed.final_answer is None and not parsed.parse_ok


def test_a_final_answer_in_a_code_block_or_after_code_is_not_the_traces():
    text = ("Step 1: Write the code.\n```python\napples = 3 + 4\n# Final Answer: 12\nprint(apples)\n```\n"
            "Step 2: It prints 7.\nFinal Answer: 7")
    parsed = parse_trace(text)
    assert parsed.final_answer == "7" and [s.step_idx for s in parsed.steps] == [1, 2]
    assert parse_trace("Step 1: total = 3 + 4  # Final Answer: 12\nFinal Answer: 7").final_answer == "7"
    assert parse_trace("Step 1: x\n```\nFinal Answer: 12\n```").final_answer is None  # only in code: none
    # negative controls: a markdown heading and a plain line stay answers
    assert parse_trace("Step 1: 3 + 4 = 7\n### Final Answer: 7").final_answer == "7"
    assert parse_trace("Step 1: 3 + 4 = 7\n**Final Answer:** 7").final_answer == "7"
    # the seed regexes are applied verbatim in strict mode
    assert parse_trace("Step 1: x\n```\nFinal Answer: 12\n```", strict=True).final_answer == "12"


def test_an_answer_line_cut_by_max_new_tokens_is_no_answer():
    cut = "Step 1: He works 5 days a week.\nStep 2: 5 * 8 = 40.\nFinal Answer: The answer is 5 days and"
    assert parse_trace(cut).final_answer is not None  # finished by end of turn, it would be the answer
    parsed = parse_trace(cut, cut=True)
    assert parsed.final_answer is None and not parsed.parse_ok and len(parsed.steps) == 2
    finished = "Step 1: 5 * 8 = 40.\nFinal Answer: 40\nStep 2: and then"
    assert parse_trace(finished, cut=True).final_answer == "40"  # the answer line ended before the cut
