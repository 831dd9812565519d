"""The protocol's stop and pair rule, the one statement of it that `mine`, `merge`, `repair` and `validate` use.

A problem's attempts are made in schedule order (attempt k at temperature schedule[k]) until it has a pair: its
first correct attempt and its first usable incorrect one (parsed, or unparsed with `pair_unparsed`; never a failed
attempt). A problem with a pair, or with every scheduled attempt made, is finished. The run stops once `min_pairs`
problems have pairs, taking problems in file order.
"""

from __future__ import annotations

from typing import Protocol, Sequence


class Outcome(Protocol):
    """What the rule reads of an attempt (a `RunRecord` has it)."""

    correct: bool
    parse_ok: bool
    error: str | None


def find_pair(attempts: Sequence[Outcome], pair_unparsed: bool = False) -> tuple[int, int] | None:
    """Indices (correct, incorrect) of the first correct and first usable incorrect attempt, if both exist."""
    correct = next((i for i, r in enumerate(attempts) if r.correct), None)
    incorrect = next(
        (i for i, r in enumerate(attempts)
         if not r.correct and (r.parse_ok or pair_unparsed) and r.error is None), None
    )
    if correct is None or incorrect is None:
        return None
    return correct, incorrect


def problem_finished(attempts: Sequence[Outcome], schedule_length: int, pair_unparsed: bool = False) -> bool:
    """Whether a problem needs no more attempts: it has its pair, or every scheduled attempt is made."""
    return len(attempts) >= schedule_length or find_pair(attempts, pair_unparsed) is not None


def first_attempt_after_pair(attempts: Sequence[Outcome], pair_unparsed: bool = False) -> int | None:
    """The index of the first attempt made after the problem already had its pair (None: there is none)."""
    for k in range(1, len(attempts)):
        if find_pair(attempts[:k], pair_unparsed) is not None:
            return k
    return None


def run_finished(pairs_found: int, min_pairs: int) -> bool:
    """Whether the run stops: `min_pairs` problems have pairs."""
    return pairs_found >= min_pairs
