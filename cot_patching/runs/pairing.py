"""From attempts to pairs: a pair record per problem whose attempts hold one, and a pair joined with its runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from cot_patching.runs.files import ArtifactError
from cot_patching.runs.records import PairRecord, RunLine, RunRecord
from cot_patching.runs.stop_rule import find_pair
from cot_patching.traces.parsing import parse_trace, select_steps


def steps_selected(text: str, role: str, strict_format: bool = False) -> dict[str, dict[str, Any]]:
    """A trace's early and late step by the selection rule (`select_steps`), as a pair record stores them; {} when
    the trace has no steps."""
    selected = select_steps(parse_trace(text, strict=strict_format))
    if selected is None:
        return {}
    early, late = selected
    return {"early": {"from": role, "step_idx": early}, "late": {"from": role, "step_idx": late}}


def group_by_problem(runs: Iterable[RunLine]) -> dict[str, list[RunLine]]:
    """Run lines per problem id, in file order."""
    grouped: dict[str, list[RunLine]] = {}
    for line in runs:
        grouped.setdefault(line.record.id, []).append(line)
    return grouped


def make_pair(
    problem_id: str, lines: Sequence[RunLine], question: str, pair_unparsed: bool = False, strict_format: bool = False,
) -> PairRecord | None:
    """The pair record of one problem's attempts, if they contain a pair."""
    found = find_pair([line.record for line in lines], pair_unparsed)
    if found is None:
        return None
    correct, incorrect = lines[found[0]], lines[found[1]]
    selected = steps_selected(correct.record.text, "correct", strict_format)
    if not selected:
        raise ArtifactError(f"{problem_id} attempt {correct.record.attempt}: correct trace has no steps")
    return PairRecord(
        id=problem_id,
        problem=question,
        gold_answer=correct.record.gold_answer,
        correct_ref={"attempt": correct.record.attempt, "runs_offset": correct.offset},
        incorrect_ref={"attempt": incorrect.record.attempt, "runs_offset": incorrect.offset},
        steps_selected=selected,
        decode_config={"top_p": correct.record.top_p, "max_new_tokens": correct.record.max_new_tokens},
        n_attempts=len(lines),
        incorrect_steps_selected=steps_selected(incorrect.record.text, "incorrect", strict_format),
    )


def in_problem_order(pairs: Iterable[PairRecord], questions: dict[str, str]) -> list[PairRecord]:
    """Pairs in the order of `questions` (the problems file), then in their given order."""
    order = {problem_id: index for index, problem_id in enumerate(questions)}
    return sorted(pairs, key=lambda pair: order.get(pair.id, len(order)))


def build_pairs(
    runs: Sequence[RunLine],
    questions: dict[str, str],
    pair_unparsed: bool = False,
    strict_format: bool = False,
) -> list[PairRecord]:
    """One pair record per problem whose attempts contain a pair, in the order of `questions` (the problems file),
    then of first attempts for problems it lacks; so a resumed run lists its pairs as a run mined in one go."""
    pairs = []
    for problem_id, lines in group_by_problem(runs).items():
        pair = make_pair(problem_id, lines, questions.get(problem_id, ""), pair_unparsed, strict_format)
        if pair is not None:
            pairs.append(pair)
    return in_problem_order(pairs, questions)


@dataclass(frozen=True)
class LoadedPair:
    """A pair record joined with its two runs."""

    pair: PairRecord
    correct: RunRecord
    incorrect: RunRecord

    @property
    def id(self) -> str:
        """The problem id."""
        return self.pair.id

    def trace(self, which: str) -> RunRecord:
        """The `correct` or `incorrect` run."""
        if which not in ("correct", "incorrect"):
            raise ValueError(f"trace must be 'correct' or 'incorrect', got {which!r}")
        return self.correct if which == "correct" else self.incorrect

    def selected_steps(self, which: str, strict_format: bool = False) -> tuple[int, int] | None:
        """(early, late) step_idx of the `correct` or `incorrect` trace; None when that trace has no steps.

        Pairs written before pair records carried the incorrect trace's steps get them here, by the same rule
        (`strict_format` as the run was mined)."""
        selected = self.pair.steps_selected if which == "correct" else self.pair.incorrect_steps_selected
        if selected is None:
            selected = steps_selected(self.trace(which).text, which, strict_format)
        return (selected["early"]["step_idx"], selected["late"]["step_idx"]) if selected else None

    def runs_offset(self, which: str) -> int:
        """Byte offset in runs.jsonl of the `correct` or `incorrect` run."""
        ref = self.pair.correct_ref if which == "correct" else self.pair.incorrect_ref
        return int(ref["runs_offset"])
