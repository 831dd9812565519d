"""Turn generated token ids into a parsed, scored trace with character and token spans."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from cot_patching.parsing import ParsedTrace, parse_trace
from cot_patching.scoring import Score, score_answer
from cot_patching.spans import TokenOffsets


@dataclass(frozen=True)
class StepSpan:
    """A step located as characters of the trace text and as tokens of its `token_ids`."""

    step_idx: int
    char_start: int
    char_end: int
    tok_start: int
    tok_end: int
    text: str

    def to_json(self) -> dict[str, Any]:
        """The record as written to runs.jsonl."""
        return asdict(self)


@dataclass(frozen=True)
class AnswerSpan:
    """The final answer's characters and covering tokens."""

    char_start: int
    char_end: int
    tok_start: int
    tok_end: int

    def to_json(self) -> dict[str, Any]:
        """The record as written to runs.jsonl."""
        return asdict(self)


@dataclass(frozen=True)
class AnalyzedTrace:
    """A decoded trace with its parse, its score and every span."""

    text: str
    parsed: ParsedTrace
    score: Score
    step_spans: list[StepSpan]
    final_answer_span: AnswerSpan | None

    @property
    def correct(self) -> bool:
        """Parsed, and the final answer matches the gold."""
        return self.parsed.parse_ok and self.score.correct


def analyze_trace(
    tokenizer: Any, token_ids: Sequence[int], gold: str, strict: bool = False
) -> AnalyzedTrace:
    """Decode, parse, score and locate the steps and final answer of one attempt."""
    offsets = TokenOffsets.build(tokenizer, token_ids)
    parsed = parse_trace(offsets.text, strict=strict)
    steps = []
    for step in parsed.steps:
        tok_start, tok_end = offsets.span(step.char_start, step.char_end)
        steps.append(StepSpan(step.step_idx, step.char_start, step.char_end, tok_start, tok_end, step.text))
    answer_span = None
    if parsed.final_answer_char_span is not None:
        a, b = parsed.final_answer_char_span
        answer_span = AnswerSpan(a, b, *offsets.span(a, b))
    return AnalyzedTrace(
        text=offsets.text,
        parsed=parsed,
        score=score_answer(parsed.final_answer, gold),
        step_spans=steps,
        final_answer_span=answer_span,
    )
