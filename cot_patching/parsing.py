"""Split a chain-of-thought trace into `Step N:` spans and find its `Final Answer:` (SPEC §5)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# The seed protocol's regexes, verbatim.
STRICT_STEP = re.compile(r"^Step\s+\d+:\s*", re.MULTILINE)
STRICT_FINAL = re.compile(r"Final Answer:\s*(.+)")

# Markdown decoration instruct models add: `**Step 1:**`, `### Step 1:`, `**Step 1**:`, `- Step 1:`.
_DECO_OPEN = r"[ \t]*(?:#{1,6}[ \t]*)?(?:[-*][ \t]+)?(?:\*\*|__|\*|_)?[ \t]*"
_DECO_CLOSE = r"(?:\*\*|__|\*|_)?"
LENIENT_STEP = re.compile(
    rf"^{_DECO_OPEN}Step\s+\d+{_DECO_CLOSE}\s*:{_DECO_CLOSE}\s*", re.MULTILINE
)
LENIENT_FINAL = re.compile(
    rf"(?:#{{1,6}}[ \t]*)?(?:\*\*|__|\*|_)?Final Answer{_DECO_CLOSE}\s*:{_DECO_CLOSE}\s*(.+)"
)


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
    final_marker_start: int | None  # where the `Final Answer:` line (with decoration) begins
    strict_format_ok: bool  # the seed regexes alone find >= 1 step and a final answer
    strict_mode: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def parse_ok(self) -> bool:
        """At least one step and a final answer."""
        return bool(self.steps) and self.final_answer is not None


def _rstrip_end(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def parse_trace(text: str, strict: bool = False) -> ParsedTrace:
    """Parse a trace into steps and a final answer; `strict` accepts only the seed regexes."""
    step_re, final_re = (STRICT_STEP, STRICT_FINAL) if strict else (LENIENT_STEP, LENIENT_FINAL)
    final_match = final_re.search(text)
    strict_ok = bool(STRICT_STEP.search(text)) and bool(STRICT_FINAL.search(text))

    final_answer: str | None = None
    final_span: tuple[int, int] | None = None
    final_start: int | None = None
    if final_match is not None:
        a, b = final_match.span(1)
        b = _rstrip_end(text, a, b)
        if b > a:
            final_answer = text[a:b]
            final_span = (a, b)
            final_start = final_match.start()

    boundaries = [m.start() for m in step_re.finditer(text)]
    steps: list[Step] = []
    for i, start in enumerate(boundaries):
        end = boundaries[i + 1] if i + 1 < len(boundaries) else len(text)
        if final_start is not None and start < final_start < end:
            end = final_start
        end = _rstrip_end(text, start, end)
        steps.append(Step(step_idx=i + 1, char_start=start, char_end=end, text=text[start:end]))
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
