"""Normalize a final answer and compare it with the gold answer (SPEC §5)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_BOXED_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}")
_LIST_MARKER = re.compile(r"^(?:[-*+>][ \t]+)+")
# An arithmetic expression left in a sentence: an operator between two terms (`w + 1`, `3 - x`, `2*4`).
_EXPRESSION = re.compile(r"[\w)][ \t]*[+*/^\u00d7\u00f7][ \t]*[\w($]|[\w)][ \t]+[-\u2212][ \t]+[\w($]")
_SENTENCE_NUMBER = re.compile(
    r"""(?<![\w.,/])
    (?P<sign>[-\u2212](?=[$\u20ac\u00a3\u00a5]?\d))?
    (?P<currency>[$\u20ac\u00a3\u00a5])?(?P<sign2>)
    (?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)
    (?![\w]|[.,]\d)""",
    re.VERBOSE,
)
_LEADING_NUMBER = re.compile(
    r"""(?P<sign>[-+\u2212])?\s*(?P<currency>[$\u20ac\u00a3\u00a5])?\s*(?P<sign2>[-+\u2212])?
    (?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?![\w]|[.,]\d)""",
    re.VERBOSE,
)
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


# The rules a verdict can come from. The first five decided a number; the last two mean no number could be
# determined, which makes the attempt unparsed (SPEC §5): it is never labelled incorrect.
DECIDED_RULES = ("numeric", "boxed", "equation", "sentence", "string")
UNDECIDED_RULES = ("no_answer", "no_number")


@dataclass(frozen=True)
class Score:
    """How an answer was judged: the verdict, the normalized value and the rule that decided."""

    correct: bool
    raw: str | None
    normalized: str | None
    rule: str  # one of DECIDED_RULES or UNDECIDED_RULES

    @property
    def determined(self) -> bool:
        """An answer was found and could be compared with the gold."""
        return self.rule in DECIDED_RULES


def strip_decoration(answer: str) -> str:
    """Trim, unwrap `\\boxed{}` and LaTeX delimiters, drop markdown and surrounding punctuation."""
    text = answer.strip()
    found, content = boxed_content(text)
    if found and content is not None:
        text = content
    text = text.replace("**", "").replace("__", "").replace("`", "").strip()
    wrapped = _LATEX_WRAP.match(text)
    if wrapped:
        text = wrapped.group(1)
    if len(text) >= 2 and text[0] == "$" and text[-1] == "$" and not _NUMBER.match(text):
        text = text[1:-1]  # inline LaTeX math `$18$`
    return _latex_to_plain(text).strip(_SURROUNDING)


def boxed_content(text: str) -> tuple[bool, str | None]:
    """(whether `text` has a `\\boxed{`, the content of the last one; None where its braces never close)."""
    opens = list(_BOXED_OPEN.finditer(text))
    if not opens:
        return False, None
    start = opens[-1].end()
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return True, text[start:i]
    return True, None


def _latex_to_plain(text: str) -> str:
    """`\\frac{a}{b}` -> `a/b`, `\\text{kg}` -> ` kg`, `\\$` -> `$`, thin spaces and `\\left`/`\\right` dropped."""
    text = _FRAC.sub(r"\1/\2", text)
    text = _TEXT.sub(r" \1", text)
    for latex, plain in (("\\$", "$"), ("\\%", "%"), ("{,}", ","), ("\\,", ""), ("\\!", ""), ("\\left", ""),
                         ("\\right", ""), ("\\times", "*"), ("\\cdot", "*"), ("\\div", "/")):
        text = text.replace(latex, plain)
    return text


def parse_number(text: str) -> Fraction | None:
    """The exact value of a numeric answer (currency, separators, %, unit word, `... = N`), else None."""
    candidate = strip_decoration(text)
    if "=" in candidate:
        candidate = strip_decoration(candidate.rsplit("=", 1)[1])
    return _number_value(_NUMBER.match(candidate))


def _number_value(match: re.Match[str] | None) -> Fraction | None:
    if match is None:
        return None
    if match["sign"] and match["sign2"]:
        return None
    try:
        value = Fraction(Decimal(match["num"].replace(",", "")))
    except InvalidOperation:
        return None
    den = match.groupdict().get("den")
    if den is not None:
        if int(den) == 0:
            return None
        value /= int(den)
    if (match["sign"] or match["sign2"] or "") in ("-", "\u2212"):
        value = -value
    return value


def answer_number(answer: str) -> tuple[Fraction | None, str]:
    """The number an answer states and the rule that found it; (None, "no_number") when none can be determined.

    In order: a `\\boxed{}` wins (unclosed: no number); the whole answer is a number (with currency, separators,
    `%`, a unit word, or as the right side of a final `=`); the number right after a sentence's last `=`; the one
    number a sentence states. Two different numbers, an expression (`w + 1`) or a digit inside a word (`10x`)
    leave it undetermined.
    """
    text = _LIST_MARKER.sub("", answer.strip())
    found, content = boxed_content(text)
    if found:
        value = parse_number(content) if content is not None else None
        return (value, "boxed") if value is not None else (None, "no_number")
    value = parse_number(text)
    if value is not None:
        return value, "numeric"
    plain = strip_decoration(text)
    if "=" in plain:
        value = _number_value(_LEADING_NUMBER.match(plain.rsplit("=", 1)[1].strip()))
        return (value, "equation") if value is not None else (None, "no_number")
    if _EXPRESSION.search(plain):
        return None, "no_number"
    matches = list(_SENTENCE_NUMBER.finditer(plain))
    if sum(len(m["num"]) - m["num"].count(",") - m["num"].count(".") for m in matches) != sum(
        c.isdigit() for c in plain
    ):
        return None, "no_number"  # a digit that belongs to no number we can read (`10x`, `2nd`, `3:30`)
    values = {_number_value(m) for m in matches}
    if len(values) == 1 and None not in values:
        return values.pop(), "sentence"
    return None, "no_number"


def format_number(value: Fraction) -> str:
    """A canonical decimal string for an exact number (`18`, `2.5`, `1/3`)."""
    if value.denominator == 1:
        return str(value.numerator)
    decimal = Decimal(value.numerator) / Decimal(value.denominator)
    if Fraction(decimal) == value:
        return format(decimal.normalize(), "f")
    return f"{value.numerator}/{value.denominator}"


def score_answer(final_answer: str | None, gold: str | int | float) -> Score:
    """Judge a final answer against the gold: by the number it states if the gold is a number."""
    if final_answer is None or not strip_decoration(final_answer):
        return Score(correct=False, raw=final_answer, normalized=None, rule="no_answer")
    gold_value = _gold_number(gold)
    if gold_value is None:
        normalized = strip_decoration(final_answer).casefold()
        return Score(
            correct=normalized == strip_decoration(str(gold)).casefold(),
            raw=final_answer,
            normalized=normalized,
            rule="string",
        )
    value, rule = answer_number(final_answer)
    if value is None:
        return Score(correct=False, raw=final_answer, normalized=None, rule=rule)
    return Score(correct=value == gold_value, raw=final_answer, normalized=format_number(value), rule=rule)


def _gold_number(gold: str | int | float) -> Fraction | None:
    if isinstance(gold, bool):
        return None
    if isinstance(gold, (int, float)):
        return Fraction(Decimal(repr(gold)))
    return parse_number(gold)
