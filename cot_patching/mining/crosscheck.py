"""A second opinion on labels from Hugging Face's `math-verify`, reported beside ours, never replacing them.

Our scorer stays the judge: it is exact (rationals, no floats), records the rule that decided, and leaves an answer
with no determinable number unparsed. math-verify is a well-kept independent grader; where the two disagree a
researcher should look. Install it with `pip install 'cot-patching[grading]'`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from cot_patching.runs.records import RunRecord


@dataclass(frozen=True)
class Disagreement:
    """A parsed attempt our label and math-verify's verdict disagree on."""

    id: str
    attempt: int
    ours: bool
    math_verify: bool
    rule: str
    normalized: str | None
    answer: str | None
    gold: str

    def __str__(self) -> str:
        def word(correct: bool) -> str:
            return "correct" if correct else "incorrect"

        return (f"math-verify disagrees: {self.id} attempt {self.attempt}: ours {word(self.ours)} "
                f"(rule {self.rule}, value {self.normalized}), math-verify {word(self.math_verify)}; "
                f"answer {self.answer!r}, gold {self.gold}")


def math_verify_correct(answer: str, gold: str) -> bool:
    """math-verify's verdict: does `answer` state the gold (parsed as LaTeX or a plain expression)?"""
    try:
        from math_verify import parse, verify
    except ImportError:
        raise ImportError("the cross-check needs math-verify: pip install 'cot-patching[grading]'") from None
    gold_parsed = parse(str(gold))
    answer_parsed = parse(answer)
    return bool(gold_parsed and answer_parsed and verify(gold_parsed, answer_parsed))


def cross_check(records: Iterable[RunRecord]) -> list[Disagreement]:
    """Every parsed attempt whose label math-verify disagrees with."""
    out = []
    for record in records:
        if not record.parse_ok or record.final_answer is None:
            continue
        verdict = math_verify_correct(record.final_answer, record.gold_answer)
        if verdict != record.correct:
            out.append(Disagreement(record.id, record.attempt, record.correct, verdict, record.score_rule,
                                    record.normalized_answer, record.final_answer, record.gold_answer))
    return out
