"""Every run committed under results/ still loads with today's readers: settings, pairs, both traces' steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from cot_patching.mining.settings import MineSettings
from cot_patching.runs import artifacts
from cot_patching.runs.directory import load_pairs
from cot_patching.runs.manifest import RunManifest

RESULTS = Path(__file__).resolve().parents[2] / "results"
RUNS = sorted(p.parent for p in RESULTS.glob("*/" + artifacts.PAIRS_FILE))


def test_there_are_committed_runs():
    assert len(RUNS) >= 5, RUNS


@pytest.mark.parametrize("run", RUNS, ids=[p.name for p in RUNS])
def test_a_committed_run_loads_with_both_traces_steps(run):
    settings = MineSettings.recorded(RunManifest.load(run))  # typed, as every workflow reads it
    strict = settings.strict_format
    assert settings.schedule[0] == 0.0 and settings.batch_size >= 1
    pairs = load_pairs(run)
    assert pairs
    for pair in pairs:
        for which in ("correct", "incorrect"):
            steps = {span["step_idx"] for span in pair.trace(which).step_spans}
            selected = pair.selected_steps(which, strict)
            assert selected is None if which == "incorrect" and not steps else set(selected) <= steps, (pair.id, which)
