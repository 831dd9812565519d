"""A run's derived files (pairs.jsonl, pairs_summary.csv, summary.json), rebuilt or updated one attempt at a time."""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cot_patching.runs.artifacts import PAIRS_CSV, PAIRS_FILE, SUMMARY_FILE
from cot_patching.runs.files import append_fsynced, atomic_write_text, write_json
from cot_patching.runs.pairing import build_pairs, group_by_problem, in_problem_order, make_pair
from cot_patching.runs.records import PairRecord, RunLine, RunRecord

CSV_COLUMNS = ("id", "n_attempts", "early_step_idx", "late_step_idx", "correct_attempt", "incorrect_attempt")


def pairs_csv(pairs: Sequence[PairRecord]) -> str:
    """pairs_summary.csv as text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for pair in pairs:
        writer.writerow([
            pair.id, pair.n_attempts,
            pair.steps_selected["early"]["step_idx"], pair.steps_selected["late"]["step_idx"],
            pair.correct_ref["attempt"], pair.incorrect_ref["attempt"],
        ])
    return buffer.getvalue()


def temperature_key(temperature: float) -> str:
    """A temperature as a summary key: `0.0`, `0.9`."""
    return repr(float(temperature))


@dataclass
class AttemptCounts:
    """The attempt counts behind summary.json, one `add` per attempt."""

    problems: set[str] = field(default_factory=set)
    by_outcome: dict[str, Counter[str]] = field(
        default_factory=lambda: {"correct": Counter(), "incorrect": Counter()})
    attempts: int = 0
    parse_ok: int = 0
    strict_format_ok: int = 0
    correct: int = 0

    def add(self, record: RunRecord) -> None:
        """Count one attempt."""
        self.problems.add(record.id)
        self.by_outcome["correct" if record.correct else "incorrect"][temperature_key(record.temperature)] += 1
        self.attempts += 1
        self.parse_ok += record.parse_ok
        self.strict_format_ok += record.strict_format_ok
        self.correct += record.correct

    def summary(self, pairs: Sequence[PairRecord], paired_attempts: int | None = None) -> dict[str, Any]:
        """summary.json's figures (`paired_attempts`: the pairs' n_attempts summed, if already known)."""
        if paired_attempts is None:
            paired_attempts = sum(p.n_attempts for p in pairs)
        return {
            "pairs_found": len(pairs),
            "problems_processed": len(self.problems),
            "avg_attempts_per_paired_item": paired_attempts / len(pairs) if pairs else None,
            "temperatures_by_outcome": {k: dict(sorted(v.items())) for k, v in self.by_outcome.items()},
            "attempts": self.attempts,
            "attempts_parse_ok": self.parse_ok,
            "attempts_strict_format_ok": self.strict_format_ok,
            "attempts_correct": self.correct,
        }


def build_summary(runs: Sequence[RunLine], pairs: Sequence[PairRecord]) -> dict[str, Any]:
    """summary.json's figures over all attempts."""
    counts = AttemptCounts()
    for line in runs:
        counts.add(line.record)
    return counts.summary(pairs)


class RunTally:
    """A run's pairs and summary, brought up to date one attempt at a time: O(1) per attempt (a pair's record is
    made once, when its problem completes it), where rebuilding both from all runs is O(attempts)."""

    def __init__(self, runs: Sequence[RunLine], questions: dict[str, str], pair_unparsed: bool = False,
                 strict_format: bool = False) -> None:
        self.questions, self.pair_unparsed, self.strict_format = questions, pair_unparsed, strict_format
        self.by_problem = group_by_problem(runs)
        self.pairs = build_pairs(runs, questions, pair_unparsed, strict_format)
        self.by_id = {p.id: p for p in self.pairs}
        self.order = {problem_id: index for index, problem_id in enumerate(questions)}
        self.paired_attempts = sum(p.n_attempts for p in self.pairs)
        self.counts = AttemptCounts()
        for line in runs:
            self.counts.add(line.record)

    def add(self, line: RunLine) -> str | None:
        """Count one new attempt; how the pairs changed: None, "appended" (a new last pair) or "changed"."""
        self.counts.add(line.record)
        problem_id = line.record.id
        lines = self.by_problem.setdefault(problem_id, [])
        lines.append(line)
        pair = self.by_id.get(problem_id)
        if pair is not None:
            self.paired_attempts += len(lines) - pair.n_attempts
            pair.n_attempts = len(lines)
            return "changed"
        pair = make_pair(problem_id, lines, self.questions.get(problem_id, ""), self.pair_unparsed,
                         self.strict_format)
        if pair is None:
            return None
        self.by_id[problem_id] = pair
        self.paired_attempts += pair.n_attempts
        last = len(self.order)
        if not self.pairs or self.order.get(problem_id, last) > self.order.get(self.pairs[-1].id, last):
            self.pairs.append(pair)
            return "appended"
        self.pairs = in_problem_order(self.by_id.values(), self.questions)
        return "changed"

    def summary(self) -> dict[str, Any]:
        """summary.json's figures now."""
        return self.counts.summary(self.pairs, self.paired_attempts)

    def write(self, outdir: Path, change: str | None) -> None:
        """Bring the derived files up to date after `add`: append a new last pair (fsynced), rewrite them only if
        an earlier pair changed, and rewrite summary.json (its size does not grow with the run)."""
        outdir = Path(outdir)
        if change == "appended":
            pair = self.pairs[-1]
            append_fsynced(outdir / PAIRS_FILE, pair.to_line())
            append_fsynced(outdir / PAIRS_CSV, pairs_csv([pair]).split("\n", 1)[1])
        write_derived(outdir, self.pairs, self.summary(), pairs_changed=change == "changed")


def write_derived(
    outdir: Path, pairs: Sequence[PairRecord], summary: dict[str, Any], pairs_changed: bool = True
) -> None:
    """Atomically rewrite summary.json, and pairs.jsonl and pairs_summary.csv if the pairs changed."""
    outdir = Path(outdir)
    if pairs_changed or not (outdir / PAIRS_FILE).exists():
        atomic_write_text(outdir / PAIRS_FILE, "".join(p.to_line() for p in pairs))
        atomic_write_text(outdir / PAIRS_CSV, pairs_csv(pairs))
    write_json(outdir / SUMMARY_FILE, summary)
