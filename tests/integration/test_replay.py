from __future__ import annotations

import dataclasses

import pytest

from cot_patching.decoding.replay import replay_attempt
from cot_patching.mining.miner import mine
from cot_patching.mining.settings import MineSettings
from cot_patching.problems import Problem
from cot_patching.runs import artifacts
from cot_patching.runs.records import read_runs

PROBLEMS = [Problem("r0", "Tom has 3 apples and buys 4 more. How many apples?", "7")]


@pytest.fixture(scope="module")
def mined(tiny, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("mined")
    settings = MineSettings(model="tiny", problems_sha256="x", max_tries=3, max_new_tokens=20)
    mine(PROBLEMS, tiny, settings, outdir, progress=False)
    return [line.record for line in read_runs(outdir / artifacts.RUNS_FILE)]


def test_every_attempt_replays_exactly(tiny, mined):
    assert [r.temperature for r in mined] == [0.0, 0.9, 0.9]
    for record in mined:
        result = replay_attempt(tiny, record)
        assert result.match and result.first_mismatch is None, record.attempt


def test_replay_detects_a_changed_token(tiny, mined):
    record = mined[1]
    tampered = dataclasses.replace(record, token_ids=record.token_ids[:5] + [record.token_ids[5] + 1] + record.token_ids[6:])
    result = replay_attempt(tiny, tampered)
    assert not result.match and result.first_mismatch == 5


def test_replay_detects_a_wrong_seed(tiny, mined):
    record = mined[2]
    assert not replay_attempt(tiny, dataclasses.replace(record, seed=record.seed + 1)).match


def test_embedded_model_replays_exactly(embedded, tmp_path):
    settings = MineSettings(model="embedded", problems_sha256="x", max_tries=2, max_new_tokens=24)
    mine(PROBLEMS, embedded, settings, tmp_path, progress=False)
    for line in read_runs(tmp_path / artifacts.RUNS_FILE):
        assert replay_attempt(embedded, line.record).match
