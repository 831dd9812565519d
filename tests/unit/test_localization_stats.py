"""Wilson intervals, p_k curves, k* and forking indices on hand-made estimates (negative controls included)."""

from __future__ import annotations

import math

import pytest

from cot_patching.localization.stats import (
    Alternative,
    Estimate,
    ForkIndex,
    forking_index,
    localize,
    step_points,
    wilson_interval,
)


def test_wilson_interval_matches_published_values():
    # Wilson (1927) / Newcombe (1998) table: 0/10 -> [0, 0.2775], 5/10 -> [0.2366, 0.7634], 81/263 -> [0.2553, 0.3662]
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def curve(trace, values, n=100):
    return step_points(trace, [(k, 10 * k) for k in range(len(values))],
                       [Estimate(n, round(v * n), 0) for v in values])


def test_kstar_is_the_largest_drop_and_ties_go_to_the_earliest_step():
    incorrect = curve("incorrect", [0.6, 0.55, 0.1, 0.05, 0.0])
    correct = curve("correct", [0.6, 0.7, 0.9, 0.95])
    found = localize(incorrect, correct)
    assert found.kstar == 2 and found.drop == pytest.approx(0.45) and found.separated
    assert found.correct_min == pytest.approx(0.7)
    assert incorrect[2].importance == pytest.approx(-0.45) and math.isnan(incorrect[0].importance)
    tied = localize(curve("incorrect", [0.8, 0.5, 0.2]), correct)
    assert tied.kstar == 1


def test_no_drop_means_no_kstar_and_a_small_drop_is_not_separated():
    assert localize(curve("incorrect", [0.2, 0.3, 0.3]), curve("correct", [0.2])).kstar is None
    small = localize(curve("incorrect", [0.5, 0.45], n=20), curve("correct", [0.5]))
    assert small.kstar == 1 and not small.separated  # 10/20 vs 9/20: intervals overlap


def test_fork_score_is_expected_outcome_minus_the_actual_tokens():
    index = ForkIndex(7, (Alternative(1, 0.6, True, Estimate(10, 1, 0)), Alternative(2, 0.2, False, Estimate(10, 9, 0))))
    assert index.expected == pytest.approx((0.6 * 0.1 + 0.2 * 0.9) / 0.8)
    assert index.fork_score == pytest.approx(index.expected - 0.1)
    harmless = ForkIndex(3, (Alternative(5, 0.5, True, Estimate(10, 8, 0)), Alternative(6, 0.5, False, Estimate(10, 8, 0))))
    assert harmless.fork_score == pytest.approx(0.0)
    assert forking_index([harmless, index]).index == 7
    assert forking_index([]) is None
