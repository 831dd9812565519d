"""kill -9 at random moments while mining a run WITH pairs; every resume ends byte-identical to one clean run."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

from helpers import CORRECT, UNPARSED, WRONG, ScriptedSampler

from cot_patching.mining.miner import mine
from cot_patching.mining.settings import MineSettings
from cot_patching.problems import Problem
from cot_patching.runs import artifacts

TESTS = Path(__file__).resolve().parent
PROBLEMS = [Problem(f"k{i}", f"What is 2 + 3? ({i})", "5") for i in range(6)]
SCRIPTS = {
    "k0": [WRONG, CORRECT], "k1": [CORRECT, UNPARSED, WRONG], "k2": [UNPARSED] * 8,
    "k3": [CORRECT, CORRECT, WRONG], "k4": [WRONG, WRONG, UNPARSED, CORRECT], "k5": [CORRECT, WRONG],
}
DERIVED = (artifacts.RUNS_FILE, artifacts.PAIRS_FILE, artifacts.PAIRS_CSV, artifacts.SUMMARY_FILE)

CHILD = """
import sys, time
from types import SimpleNamespace
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/.."]
from transformers import AutoTokenizer
from test_kill_campaign import PROBLEMS, SCRIPTS, SETTINGS, slow_sampler
from cot_patching.mining.miner import mine
tokenizer = AutoTokenizer.from_pretrained(sys.argv[3])
print("ready", flush=True)
mine(PROBLEMS, SimpleNamespace(tokenizer=tokenizer, info=None), SETTINGS, sys.argv[2], min_pairs=4, progress=False,
     sampler=slow_sampler(tokenizer))
"""
SETTINGS = MineSettings(model="scripted", problems_sha256="k" * 64)


def slow_sampler(tokenizer):
    """The scripted decoder, 100 ms an attempt, so that kills land inside the mining loop."""
    import time

    inner = ScriptedSampler(tokenizer, SCRIPTS)

    def sample(*args):
        time.sleep(0.1)
        return inner(*args)

    return sample


KILL_TRIES = 12


def kill_until_finished(code: str, outdir: Path, tokenizer_dir: Path, rng: random.Random, low: float,
                        high: float) -> int:
    """Start the mining child `code` again and again, kill -9 it after a random `low`..`high` s (the first
    KILL_TRIES starts), then let one run finish on its own; how many kills landed. A fixed number of kill tries keeps
    the campaign from depending on how fast a loaded machine gets through a resume's start-up."""
    kills = 0
    for start in range(KILL_TRIES + 1):
        child = subprocess.Popen([sys.executable, "-c", code, str(TESTS), str(outdir), str(tokenizer_dir)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        try:
            child.wait(timeout=rng.uniform(low, high) if start < KILL_TRIES else 600)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
            child.wait()
            kills += 1
            continue
        assert child.returncode == 0, child.stderr.read()
        return kills
    raise AssertionError("the killed run never finished")


def test_kill_9_campaign_on_a_run_with_pairs(smollm2_tokenizer, tmp_path):
    from types import SimpleNamespace

    reference = tmp_path / "clean"
    result = mine(PROBLEMS, SimpleNamespace(tokenizer=smollm2_tokenizer, info=None), SETTINGS, reference,
                  min_pairs=4, progress=False, sampler=ScriptedSampler(smollm2_tokenizer, SCRIPTS))
    assert result.summary["pairs_found"] == 4  # k0, k1, k3, k4; min-pairs stops before k5
    killed = tmp_path / "killed"
    tokenizer_dir = tmp_path / "tokenizer"
    smollm2_tokenizer.save_pretrained(tokenizer_dir)  # loads in a fraction of the GGUF's time
    kills = kill_until_finished(CHILD, killed, tokenizer_dir, random.Random(20261123), 0.2, 1.0)
    assert kills >= 3, f"only {kills} kills landed"
    for name in DERIVED:
        assert (killed / name).read_bytes() == (reference / name).read_bytes(), name
    sessions = json.loads((killed / artifacts.MANIFEST_FILE).read_text())["sessions"]
    assert 1 <= len(sessions) <= kills + 1  # a kill before the lock is taken records no session


BATCHED_CHILD = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/.."]
from transformers import AutoTokenizer
from test_kill_campaign import PROBLEMS, BATCHED, scripted_group_model
from cot_patching.mining.miner import mine
tokenizer = AutoTokenizer.from_pretrained(sys.argv[3])
model = scripted_group_model(tokenizer, delay=0.15)
print("ready", flush=True)
mine(PROBLEMS, model, BATCHED, sys.argv[2], min_pairs=4, progress=False)
"""
BATCHED = MineSettings(model="scripted", problems_sha256="k" * 64, batch_size=3)


def scripted_group_model(tokenizer, delay=0.0):
    """A model whose batched decoder returns the scripted texts (`delay` seconds a group), for `mine --batch-size`."""
    import time
    from types import SimpleNamespace

    from cot_patching.mining import miner

    inner = ScriptedSampler(tokenizer, SCRIPTS)

    def sample_batch(decoder, rows, stop_token_ids, width=None, stop_check_interval=None):
        time.sleep(delay)
        return [None if row is None else inner(None, row.prompt_ids, row.config, row.seed) for row in rows]

    miner.sample_batch = sample_batch
    return SimpleNamespace(tokenizer=tokenizer, info=None, stop_token_ids=frozenset(),
                           batched_decoder=lambda size, cache_len: SimpleNamespace(path="plain_eager"))


def test_kill_9_campaign_on_a_batched_run(smollm2_tokenizer, tmp_path, monkeypatch):
    from cot_patching.mining import miner

    monkeypatch.setattr(miner, "sample_batch", miner.sample_batch)  # restored after the in-process reference run
    reference = tmp_path / "clean"
    result = mine(PROBLEMS, scripted_group_model(smollm2_tokenizer), BATCHED, reference, min_pairs=4,
                  progress=False)
    assert result.summary["pairs_found"] >= 4
    killed, tokenizer_dir = tmp_path / "killed", tmp_path / "tokenizer"
    smollm2_tokenizer.save_pretrained(tokenizer_dir)
    kills = kill_until_finished(BATCHED_CHILD, killed, tokenizer_dir, random.Random(20261124), 0.1, 0.6)
    assert kills >= 2, f"only {kills} kills landed"
    for name in DERIVED:
        assert (killed / name).read_bytes() == (reference / name).read_bytes(), name
