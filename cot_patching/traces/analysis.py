"""Turn generated token ids into a parsed, scored trace with character and token spans."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from cot_patching.traces.parsing import ParsedTrace, parse_trace
from cot_patching.traces.scoring import Score, score_answer
from cot_patching.traces.spans import TokenOffsets


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


# Version of the rules that turn a trace's text into steps, spans, a final answer and a label. A run records
# the version it was labelled with; `cot-patching repair` relabels a run written under an earlier one.
# 1: the seed rules (until 2026-11-23). 2: empty steps dropped, nothing after `Final Answer` is a step, spans
# start at the header line's first non-whitespace character, next-line answers, sentence answers scored by the
# number they state, no number -> unparsed. 3: an answer on the last line of a trace cut by max-new-tokens is no
# answer; a `Final Answer` inside a fenced code block or a comment after code is not the trace's (lenient mode).
TRACE_RULES_VERSION = 3


@dataclass(frozen=True)
class Verdict:
    """A trace's parse and the score of its final answer."""

    parsed: ParsedTrace
    score: Score

    @property
    def parse_ok(self) -> bool:
        """At least one step, a final answer, and a number in it that could be compared with the gold."""
        return self.parsed.parse_ok and self.score.determined

    @property
    def correct(self) -> bool:
        """Parsed, and the final answer matches the gold."""
        return self.parse_ok and self.score.correct


def judge_text(text: str, gold: str, strict: bool = False, cut: bool = False) -> Verdict:
    """Parse a trace's text and score its final answer against the gold (`cut`: stopped at max-new-tokens)."""
    parsed = parse_trace(text, strict=strict, cut=cut)
    return Verdict(parsed=parsed, score=score_answer(parsed.final_answer, gold))


@dataclass(frozen=True)
class AnalyzedTrace(Verdict):
    """A decoded trace with its parse, its score and every span."""

    text: str
    step_spans: list[StepSpan]
    final_answer_span: AnswerSpan | None

    def record_fields(self) -> dict[str, Any]:
        """The runs.jsonl fields derived from the token ids (everything `repair` may recompute)."""
        return {
            "text": self.text,
            "final_answer": self.parsed.final_answer,
            "correct": self.correct,
            "parse_ok": self.parse_ok,
            "step_spans": [s.to_json() for s in self.step_spans],
            "final_answer_span": None if self.final_answer_span is None else self.final_answer_span.to_json(),
            "normalized_answer": self.score.normalized,
            "score_rule": self.score.rule,
            "strict_format_ok": self.parsed.strict_format_ok,
        }


def analyze_trace(
    tokenizer: Any, token_ids: Sequence[int], gold: str, strict: bool = False, offsets: TokenOffsets | None = None,
    cut: bool = False,
) -> AnalyzedTrace:
    """Decode, parse, score and locate the steps and final answer of one attempt (`offsets`: already built;
    `cut`: decoding stopped at max-new-tokens, not at end of turn)."""
    offsets = offsets or TokenOffsets.build(tokenizer, token_ids)
    verdict = judge_text(offsets.text, gold, strict=strict, cut=cut)
    steps = []
    for step in verdict.parsed.steps:
        tok_start, tok_end = offsets.span(step.char_start, step.char_end)
        steps.append(StepSpan(step.step_idx, step.char_start, step.char_end, tok_start, tok_end, step.text))
    answer_span = None
    if verdict.parsed.final_answer_char_span is not None:
        a, b = verdict.parsed.final_answer_char_span
        answer_span = AnswerSpan(a, b, *offsets.span(a, b))
    return AnalyzedTrace(
        parsed=verdict.parsed,
        score=verdict.score,
        text=offsets.text,
        step_spans=steps,
        final_answer_span=answer_span,
    )


def first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    """Index of the first token where two traces differ (the shorter length if one is a prefix of the other)."""
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return min(len(a), len(b))
