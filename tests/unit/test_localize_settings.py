"""Localization settings: rounds, the adaptive stopping rule, and which changes a localized folder accepts."""

from __future__ import annotations

import pytest

from cot_patching.localization.settings import LocalizeError, LocalizeSettings, reconcile, rounds_for, still_open
from cot_patching.localization.stats import Estimate


def settings(**changes) -> LocalizeSettings:
    return LocalizeSettings(**{"rollouts": 100, "fork_rollouts": 10, **changes})


def test_rounds_split_r_and_are_validated():
    assert rounds_for(100, None) == (100,)
    assert rounds_for(100, 25) == (25, 50, 75, 100)
    assert rounds_for(10, 4) == (4, 8, 10)
    assert settings().rounds == (100,)
    for bad in ((50,), (50, 25, 100), (0, 100), (50, 50, 100)):
        with pytest.raises(ValueError, match="rounds"):
            settings(rounds=bad)
    with pytest.raises(ValueError, match="--stop-width"):
        settings(stop_width=0.5)
    with pytest.raises(ValueError, match="--round-size"):
        rounds_for(100, 0)


def test_a_prefix_stays_open_while_its_interval_is_wide():
    assert still_open(Estimate(25, 0, 0), None)  # no rule: every prefix gets all R
    assert not still_open(Estimate(25, 0, 0), 0.1)  # 0/25: [0, 0.133], half-width 0.067
    assert still_open(Estimate(25, 12, 0), 0.1)  # 12/25: half-width 0.18
    assert not still_open(Estimate(100, 50, 0), 0.1)  # 50/100: half-width 0.096
    assert still_open(None, 0.1)


def test_more_rollouts_extend_but_nothing_else_changes():
    recorded = settings(rollouts=50, fork_rollouts=10)
    extended = reconcile(recorded, settings(rounds=rounds_for(100, 25), stop_width=0.1), forks_begun=False)
    assert extended.rounds == (50, 75, 100) and extended.stop_width == 0.1  # the recorded round kept as it was
    assert reconcile(recorded, recorded, forks_begun=True) == recorded
    assert reconcile(recorded, settings(rollouts=50, fork_rollouts=30), forks_begun=False).fork_rollouts == 30
    refusals = [
        (settings(rollouts=50, temperature=0.9), False, "temperature"),
        (settings(rollouts=40), False, "fewer"),
        (settings(rollouts=100), True, "forking phase has begun"),
        (settings(rollouts=50, fork_rollouts=30), True, "forking phase has begun"),
        (settings(rollouts=50, stop_width=0.1), False, "stop_width"),
    ]
    for wanted, forks_begun, message in refusals:
        with pytest.raises(LocalizeError, match=message):
            reconcile(recorded, wanted, forks_begun)
    adaptive = settings(rounds=(25, 50, 75, 100), stop_width=0.1)
    with pytest.raises(LocalizeError, match="several rounds"):
        reconcile(adaptive, settings(rollouts=200, rounds=(150, 200), stop_width=0.05), forks_begun=False)
