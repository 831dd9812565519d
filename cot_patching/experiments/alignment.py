"""Which positions of a recipient trace take which positions of a source trace (one `Cell` per patch site).

P is the prompt length; a trace's step k covers its tokens [tok_start(k), tok_end(k)), i.e. absolute positions
P + tok_start(k) ... P + tok_end(k) - 1 of prompt + trace.
"""

from __future__ import annotations

from dataclasses import dataclass

from cot_patching.experiments.patching import answer_target
from cot_patching.models.loading import LoadedModel
from cot_patching.runs.records import RunRecord
from cot_patching.traces.analysis import first_difference

ALIGNMENTS = ("step", "final_answer", "position")
ANSWERS = ("gold", "wrong")  # the two scoring rows of every trace, in this order


@dataclass(frozen=True)
class ScoredTrace:
    """A trace as patching sees it: its context (prompt + tokens before the answer) and both answers' tokens."""

    record: RunRecord
    context: list[int]
    targets: tuple[list[int], list[int]]  # (gold answer tokens, wrong answer tokens), each with the gap text

    @property
    def prompt_len(self) -> int:
        """P: the number of prompt tokens."""
        return len(self.record.prompt_token_ids)

    def rows(self, targets: tuple[list[int], list[int]] | None = None) -> list[list[int]]:
        """The two scoring rows: context + gold tokens, context + wrong tokens (or the given answer tokens)."""
        gold, wrong = targets if targets is not None else self.targets
        return [self.context + gold, self.context + wrong]

    def step_range(self, step_idx: int) -> tuple[int, int]:
        """Absolute [start, end) positions of step `step_idx` in prompt + trace."""
        for span in self.record.step_spans:
            if span["step_idx"] == step_idx:
                return self.prompt_len + span["tok_start"], self.prompt_len + span["tok_end"]
        raise ValueError(f"{self.record.id} attempt {self.record.attempt} has no step {step_idx} "
                         f"(steps {self.step_indices()})")

    def step_indices(self) -> list[int]:
        """The step numbers this trace has, in order."""
        return [span["step_idx"] for span in self.record.step_spans]


def scored_trace(model: LoadedModel, record: RunRecord, gold: str, wrong: str) -> ScoredTrace:
    """The trace with the gold and the wrong answer each written right after its `Final Answer:`."""
    context, gold_ids = answer_target(model, record, gold)
    _, wrong_ids = answer_target(model, record, wrong)
    return ScoredTrace(record, context, (gold_ids, wrong_ids))


@dataclass(frozen=True)
class Cell:
    """One patch site: per scoring row, the recipient positions and the source positions they take."""

    alignment: str
    step_idx: int | None
    recipient: tuple[tuple[int, ...], tuple[int, ...]]
    source: tuple[tuple[int, ...], tuple[int, ...]]

    def __post_init__(self) -> None:
        for mine, theirs in zip(self.recipient, self.source):
            if len(mine) != len(theirs) or not mine:
                raise ValueError(f"{self.alignment} cell: {len(mine)} recipient vs {len(theirs)} source positions")

    @property
    def position(self) -> int:
        """The first recipient position (gold row)."""
        return self.recipient[0][0]


def step_cell(recipient: ScoredTrace, source: ScoredTrace, step_idx: int) -> Cell:
    """Step k: R's positions P_R + tok_start_R(k) + j take S's P_S + tok_start_S(k) + j, j < the shorter length."""
    r_start, r_end = recipient.step_range(step_idx)
    s_start, s_end = source.step_range(step_idx)
    n = min(r_end - r_start, s_end - s_start)
    for trace, end in ((recipient, r_start + n), (source, s_start + n)):
        if end > len(trace.context):
            raise ValueError(f"step {step_idx} of {trace.record.id} attempt {trace.record.attempt} ends at "
                             f"{end}, past its context of {len(trace.context)} tokens")
    positions_r = tuple(range(r_start, r_start + n))
    positions_s = tuple(range(s_start, s_start + n))
    return Cell("step", step_idx, (positions_r, positions_r), (positions_s, positions_s))


def step_cells(recipient: ScoredTrace, source: ScoredTrace) -> list[Cell]:
    """One cell per step number present in both traces, in step order."""
    shared = [k for k in recipient.step_indices() if k in set(source.step_indices())]
    return [step_cell(recipient, source, k) for k in shared]


def final_answer_cell(recipient: ScoredTrace, source: ScoredTrace) -> Cell:
    """The positions that predict each answer token: the last context position and every answer token but the
    last, aligned from the answer's start (the source is run on its own context + the recipient's answer tokens)."""
    recipient_rows, source_rows = [], []
    for targets in recipient.targets:
        n = len(targets)
        recipient_rows.append(tuple(range(len(recipient.context) - 1, len(recipient.context) - 1 + n)))
        source_rows.append(tuple(range(len(source.context) - 1, len(source.context) - 1 + n)))
    return Cell("final_answer", None, (recipient_rows[0], recipient_rows[1]), (source_rows[0], source_rows[1]))


def position_cells(recipient: ScoredTrace, source: ScoredTrace) -> list[Cell]:
    """Single positions: each trace token of the shared prefix and the first differing token, same position in both."""
    if recipient.record.prompt_token_ids != source.record.prompt_token_ids:
        raise ValueError(f"{recipient.record.id}: the two traces have different prompts")
    first = first_difference(recipient.record.token_ids, source.record.token_ids)
    last = min(first, len(recipient.context) - 1 - recipient.prompt_len, len(source.context) - 1 - source.prompt_len)
    cells = []
    for index in range(0, last + 1):
        position = (recipient.prompt_len + index,)
        cells.append(Cell("position", None, (position, position), (position, position)))
    return cells


def cells_for(alignment: str, recipient: ScoredTrace, source: ScoredTrace) -> list[Cell]:
    """Every cell of one alignment for a (recipient, source) pair of traces."""
    if alignment == "step":
        return step_cells(recipient, source)
    if alignment == "final_answer":
        return [final_answer_cell(recipient, source)]
    if alignment == "position":
        return position_cells(recipient, source)
    raise ValueError(f"unknown alignment {alignment!r}; choose from {', '.join(ALIGNMENTS)}")
