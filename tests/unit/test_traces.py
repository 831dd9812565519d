from __future__ import annotations

from cot_patching.traces.analysis import analyze_trace
from cot_patching.traces.spans import decode_tokens


def test_analyze_trace_spans_and_score(any_tokenizer):
    text = "**Step 1:** 16 - 3 - 4 = 9\n**Step 2:** 9 * 2 = 18\n**Final Answer:** $18.00"
    ids = any_tokenizer(text, add_special_tokens=False)["input_ids"]
    trace = analyze_trace(any_tokenizer, ids, "18")
    assert trace.text == decode_tokens(any_tokenizer, ids)
    assert trace.correct and trace.score.rule == "numeric" and trace.score.normalized == "18"
    assert [s.step_idx for s in trace.step_spans] == [1, 2]
    for span in trace.step_spans:
        assert trace.text[span.char_start:span.char_end] == span.text
        assert span.text.strip("* ") in decode_tokens(any_tokenizer, ids[span.tok_start:span.tok_end])
    answer = trace.final_answer_span
    assert trace.text[answer.char_start:answer.char_end] == "$18.00"
    assert "18.00" in decode_tokens(any_tokenizer, ids[answer.tok_start:answer.tok_end])


def test_unparsed_trace_is_incorrect_even_if_the_number_is_right(smollm2_tokenizer):
    ids = smollm2_tokenizer("The answer is 18.", add_special_tokens=False)["input_ids"]
    trace = analyze_trace(smollm2_tokenizer, ids, "18")
    assert not trace.parsed.parse_ok and not trace.correct and trace.final_answer_span is None
