"""Kill a real mining subprocess several times; the resumed run must equal an uninterrupted one, line for line."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

from cot_patching.runs import artifacts
from cot_patching.runs.directory import check_not_locked

DERIVED = (artifacts.RUNS_FILE, artifacts.PAIRS_FILE, artifacts.PAIRS_CSV, artifacts.SUMMARY_FILE)


def _command(problems, model_dir, outdir):
    return [sys.executable, "-m", "cot_patching.cli", "mine", "--problems", str(problems), "--model", str(model_dir),
            "--outdir", str(outdir), "--max-tries", "8", "--max-new-tokens", "40", "--min-pairs", "5",
            "--no-progress"]


def _lines(path):
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_killed_mining_resumes_to_identical_artifacts(tiny_dir, tmp_path):
    problems = tmp_path / "problems.json"
    problems.write_text(json.dumps([
        {"id": f"k{i}", "question": f"Sam has {i} cards and gets {i + 1} more. How many? 日本 café", "gold_answer": 2 * i + 1}
        for i in range(3)
    ], ensure_ascii=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run(_command(problems, tiny_dir, reference), check=True, env=env, capture_output=True)
    total = _lines(reference / artifacts.RUNS_FILE)
    assert total == 24  # a random model never parses: 8 attempts per problem

    resumed = tmp_path / "resumed"
    rng = random.Random(20261122)
    kills = 0
    for target in sorted(rng.sample(range(1, total - 1), 4)):
        process = subprocess.Popen(_command(problems, tiny_dir, resumed), env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while _lines(resumed / artifacts.RUNS_FILE) < target and process.poll() is None:
            assert time.monotonic() < deadline, "mining made no progress"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 3
    assert _lines(resumed / artifacts.RUNS_FILE) < total
    final = subprocess.run(_command(problems, tiny_dir, resumed), env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    for name in DERIVED:
        assert (resumed / name).read_text().splitlines() == (reference / name).read_text().splitlines(), name
    check_not_locked(resumed)  # the lock file stays (it is never deleted), but nobody holds it
