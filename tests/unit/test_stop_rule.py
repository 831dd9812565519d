"""The stop and pair rule, stated once (`runs.stop_rule`), with its negative cases."""

from __future__ import annotations

from dataclasses import dataclass

from cot_patching.runs.stop_rule import find_pair, first_attempt_after_pair, problem_finished, run_finished


@dataclass
class A:
    correct: bool
    parse_ok: bool = True
    error: str | None = None


def test_a_problem_is_finished_by_its_pair_or_its_schedule() -> None:
    assert not problem_finished([A(True), A(True)], 8)
    assert problem_finished([A(True), A(False)], 8)
    assert problem_finished([A(True)] * 3, 3)
    assert not problem_finished([A(True), A(False, parse_ok=False)], 8)  # unparsed is not a usable incorrect
    assert problem_finished([A(True), A(False, parse_ok=False)], 8, pair_unparsed=True)


def test_a_failed_attempt_is_never_the_incorrect_member() -> None:
    assert find_pair([A(True), A(False, error="RuntimeError: x")]) is None
    assert find_pair([A(True), A(False, error="RuntimeError: x"), A(False)]) == (0, 2)


def test_attempts_after_the_pair_are_found() -> None:
    assert first_attempt_after_pair([A(False), A(True)]) is None
    assert first_attempt_after_pair([A(False), A(True), A(True)]) == 2
    assert first_attempt_after_pair([A(True), A(True), A(False)]) is None


def test_the_run_stops_at_min_pairs() -> None:
    assert not run_finished(19, 20) and run_finished(20, 20) and run_finished(21, 20)
