"""Split a chain-of-thought trace into `Step N:` spans and find its `Final Answer:` (SPEC §5)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# The seed protocol's regexes, verbatim.
STRICT_STEP = re.compile(r"^Step\s+\d+:\s*", re.MULTILINE)
STRICT_FINAL = re.compile(r"Final Answer:\s*(.+)")

# What instruct models put before a header on its line: indentation, a blockquote `>`, a list marker
# (`-`, `*`, `+`, `1.`, `1)`), a markdown heading `###`, emphasis `**`. Only the indentation is outside a span.
_INDENT = r"[ \t]*"
_DECO_OPEN = (
    r"(?:>[ \t]*)*(?:(?:[-*+]|\d{1,3}[.)])[ \t]+)?(?:#{1,6}[ \t]*)?(?:\*\*|__|\*|_)?[ \t]*"
)
_DECO_CLOSE = r"(?:\*\*|__|\*|_)?"
LENIENT_STEP = re.compile(
    rf"^{_INDENT}(?P<header>{_DECO_OPEN}(?i:step)[ \t]+\d+{_DECO_CLOSE}[ \t]*:{_DECO_CLOSE}[ \t]*)",
    re.MULTILINE,
)
# `Final Answer:` anywhere (any case, decorated), or `Final Answer` alone on its line as a heading.
LENIENT_FINAL = re.compile(
    rf"(?:#{{1,6}}[ \t]*)?(?:\*\*|__|\*|_)?(?i:final answer){_DECO_CLOSE}[ \t]*:{_DECO_CLOSE}\s*(.+)"
    rf"|^{_INDENT}{_DECO_OPEN}(?i:final answer)[ \t]*{_DECO_CLOSE}[ \t]*:?[ \t]*{_DECO_CLOSE}[ \t]*\n\s*(.+)",
    re.MULTILINE,
)
# Decoration left in a step's body when its header line holds nothing else (`**Step 3:**`).
_EMPTY_BODY = re.compile(r"[\s*_#>`-]*")


@dataclass(frozen=True)
class Step:
    """One reasoning step: `text == trace[char_start:char_end]`, header included."""

    step_idx: int  # 1-based position among the trace's steps
    char_start: int
    char_end: int
    text: str


@dataclass(frozen=True)
class ParsedTrace:
    """Steps, final answer and where they are in the trace text."""

    steps: list[Step]
    final_answer: str | None
    final_answer_char_span: tuple[int, int] | None
    final_marker_start: int | None  # first non-whitespace character of the `Final Answer:` line
    strict_format_ok: bool  # the seed regexes alone find >= 1 step and a final answer
    strict_mode: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def parse_ok(self) -> bool:
        """At least one step and a final answer (scoring may still find no number: see `judge`)."""
        return bool(self.steps) and self.final_answer is not None


def _rstrip_end(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def _marker_start(text: str, position: int) -> int:
    """Where a header found at `position` begins: its line's first non-whitespace character if only
    decoration (list marker, `#`, `>`, emphasis) stands before it on the line, else `position`."""
    line_start = text.rfind("\n", 0, position) + 1
    while line_start < position and text[line_start] in " \t":
        line_start += 1
    return line_start if re.fullmatch(_DECO_OPEN, text[line_start:position]) else position


_FENCE = re.compile(r"^[ \t]*(```|~~~)", re.MULTILINE)
# Code before a comment marker on the line: `total = 5  # Final Answer: 5`, `x++; // Final Answer: 5`.
_CODE_COMMENT = re.compile(r"[ \t]*[^\s#/].*?(?:#+|//)[ \t]*")


def in_code(text: str, position: int) -> bool:
    """Whether `position` lies inside a fenced code block or a comment that follows code on its line."""
    if len(_FENCE.findall(text, 0, position)) % 2 == 1:
        return True
    line_start = text.rfind("\n", 0, position) + 1
    return bool(_CODE_COMMENT.fullmatch(text[line_start:position].rstrip("*_ \t")))


def _find_final(text: str, strict: bool) -> tuple[str | None, tuple[int, int] | None, int | None]:
    """(answer, answer char span, where the `Final Answer` line's content begins) of the first match (lenient:
    the first outside code, since a `Final Answer` in a code block or comment is the code's, not the trace's)."""
    matches = (STRICT_FINAL if strict else LENIENT_FINAL).finditer(text)
    match = next((m for m in matches
                  if strict or not in_code(text, m.start() + m.group(0).lower().find("final answer"))), None)
    if match is None:
        return None, None, None
    group = 1 if match.group(1) is not None else 2
    a, b = match.span(group)
    b = _rstrip_end(text, a, b)
    if b <= a:
        return None, None, None
    marker = match.start() if strict else _marker_start(text, match.start())
    return text[a:b], (a, b), marker


def parse_trace(text: str, strict: bool = False, cut: bool = False) -> ParsedTrace:
    """Parse a trace into steps and a final answer; `strict` accepts only the seed regexes; `cut`: decoding stopped
    at max-new-tokens, so an answer on the text's last, unfinished line is no answer (its line was cut)."""
    final_answer, final_span, final_start = _find_final(text, strict)
    if cut and final_span is not None and "\n" not in text[final_span[1]:]:
        final_answer, final_span = None, None
    strict_ok = bool(STRICT_STEP.search(text)) and bool(STRICT_FINAL.search(text))

    if strict:
        headers = [(m.start(), m.end()) for m in STRICT_STEP.finditer(text)]
    else:
        headers = [(m.start("header"), m.end()) for m in LENIENT_STEP.finditer(text)]
    if final_start is not None:
        headers = [h for h in headers if h[0] < final_start]  # nothing after the Final Answer line is a step
    steps: list[Step] = []
    for i, (start, header_end) in enumerate(headers):
        end = headers[i + 1][0] if i + 1 < len(headers) else len(text)
        if final_start is not None and start < final_start <= end:
            end = final_start
        end = _rstrip_end(text, start, end)
        if _EMPTY_BODY.fullmatch(text, min(header_end, end), end):
            continue  # `Step N:` with nothing in it is not a step
        steps.append(Step(step_idx=len(steps) + 1, char_start=start, char_end=end, text=text[start:end]))
    return ParsedTrace(
        steps=steps,
        final_answer=final_answer,
        final_answer_char_span=final_span,
        final_marker_start=final_start,
        strict_format_ok=strict_ok,
        strict_mode=strict,
    )


# A digit, or an arithmetic operator (a hyphen or slash only when it stands alone, not in "step-by-step").
_SUBSTANTIVE = re.compile(r"\d|[+×÷=]|(?<!\S)[-*/](?!\S)")


def step_body(step: Step) -> str:
    """The step's text after its `Step N:` header."""
    header = LENIENT_STEP.match(step.text)
    return step.text[header.end():] if header else step.text


def select_steps(parsed: ParsedTrace) -> tuple[int, int] | None:
    """(early, late) step_idx: first substantive step, last step before `Final Answer:`."""
    if not parsed.steps:
        return None
    early = next((s for s in parsed.steps if _SUBSTANTIVE.search(step_body(s))), None)
    if early is None:
        early = next((s for s in parsed.steps if step_body(s).strip()), parsed.steps[0])
    before_final = [
        s for s in parsed.steps
        if parsed.final_marker_start is None or s.char_start < parsed.final_marker_start
    ]
    late = before_final[-1] if before_final else parsed.steps[-1]
    return early.step_idx, late.step_idx
