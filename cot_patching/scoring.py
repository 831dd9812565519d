"""Normalize a final answer and compare it with the gold answer (SPEC §5)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_BOXED = re.compile(r"\\boxed\s*\{(.*)\}", re.DOTALL)
_LATEX_WRAP = re.compile(r"^\\[(\[](.*)\\[)\]]$", re.DOTALL)
_SURROUNDING = " \t\n.,;:!?'\"()[]{}<>*_`"
_NUMBER = re.compile(
    r"""^
    (?P<sign>[-+\u2212])?\s*
    (?P<currency>[$\u20ac\u00a3\u00a5])?\s*
    (?P<sign2>[-+\u2212])?
    (?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
    (?:\s*/\s*(?P<den>\d+))?
    \s*(?P<percent>%)?
    (?:\s+(?P<unit>[^\W\d_]+\.?))?
    $""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Score:
    """How an answer was judged: the verdict, the normalized value and the rule that decided."""

    correct: bool
    raw: str | None
    normalized: str | None
    rule: str  # "numeric", "string" or "no_answer"


def strip_decoration(answer: str) -> str:
    """Trim, unwrap `\\boxed{}` and LaTeX delimiters, drop markdown and surrounding punctuation."""
    text = answer.strip()
    boxed = _BOXED.search(text)
    if boxed:
        text = boxed.group(1)
    text = text.replace("**", "").replace("__", "").replace("`", "").strip()
    wrapped = _LATEX_WRAP.match(text)
    if wrapped:
        text = wrapped.group(1)
    if len(text) >= 2 and text[0] == "$" and text[-1] == "$" and not _NUMBER.match(text):
        text = text[1:-1]  # inline LaTeX math `$18$`
    return text.strip(_SURROUNDING)


def parse_number(text: str) -> Fraction | None:
    """The exact value of a numeric answer (currency, separators, %, unit word, `... = N`), else None."""
    candidate = strip_decoration(text)
    if "=" in candidate:
        candidate = strip_decoration(candidate.rsplit("=", 1)[1])
    match = _NUMBER.match(candidate)
    if match is None:
        return None
    if match["sign"] and match["sign2"]:
        return None
    try:
        value = Fraction(Decimal(match["num"].replace(",", "")))
    except InvalidOperation:
        return None
    if match["den"] is not None:
        if int(match["den"]) == 0:
            return None
        value /= int(match["den"])
    if (match["sign"] or match["sign2"] or "") in ("-", "\u2212"):
        value = -value
    return value


def format_number(value: Fraction) -> str:
    """A canonical decimal string for an exact number (`18`, `2.5`, `1/3`)."""
    if value.denominator == 1:
        return str(value.numerator)
    decimal = Decimal(value.numerator) / Decimal(value.denominator)
    if Fraction(decimal) == value:
        return format(decimal.normalize(), "f")
    return f"{value.numerator}/{value.denominator}"


def score_answer(final_answer: str | None, gold: str | int | float) -> Score:
    """Judge a final answer against the gold: numerically and exactly if both are numbers."""
    if final_answer is None or not strip_decoration(final_answer):
        return Score(correct=False, raw=final_answer, normalized=None, rule="no_answer")
    gold_value = _gold_number(gold)
    answer_value = parse_number(final_answer)
    if gold_value is not None and answer_value is not None:
        return Score(
            correct=answer_value == gold_value,
            raw=final_answer,
            normalized=format_number(answer_value),
            rule="numeric",
        )
    normalized = strip_decoration(final_answer).casefold()
    return Score(
        correct=normalized == strip_decoration(str(gold)).casefold(),
        raw=final_answer,
        normalized=normalized,
        rule="string",
    )


def _gold_number(gold: str | int | float) -> Fraction | None:
    if isinstance(gold, bool):
        return None
    if isinstance(gold, (int, float)):
        return Fraction(Decimal(repr(gold)))
    return parse_number(gold)
