"""`mine --devices`: one shard worker process per device, then a merge equal to one process (CPU devices here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cot_patching.mining.workers import parse_devices

FLAGS = ["--max-tries", "2", "--max-new-tokens", "8", "--min-pairs", "20", "--no-progress"]


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    items = json.load(open("data/problems.sample.json"))[:3]
    path = tmp_path_factory.mktemp("data") / "problems.json"
    path.write_text(json.dumps(items))
    return path


def _mine(model_dir, *args):
    """`mine` on the tiny random model (the workers, shards and merge are what is tested, not the model)."""
    return subprocess.run([sys.executable, "-m", "cot_patching.cli", "mine", "--model", str(model_dir), *FLAGS, *args],
                          capture_output=True, text=True, timeout=900)


def test_two_workers_merge_to_the_single_process_run(problems, tiny_dir, tmp_path):
    many = _mine(tiny_dir, "--problems", str(problems), "--devices", "cpu,cpu", "--outdir", str(tmp_path / "many"))
    assert many.returncode == 0, many.stdout + many.stderr
    assert "2 workers (cpu, cpu)" in many.stdout and "merged 3 problems" in many.stdout
    single = _mine(tiny_dir, "--problems", str(problems), "--device", "cpu", "--outdir", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    for name in ("runs.jsonl", "pairs.jsonl", "pairs_summary.csv"):
        assert (tmp_path / "many" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert json.loads((tmp_path / "many/summary.json").read_text()) == json.loads((tmp_path / "one/summary.json").read_text())
    manifest = json.loads((tmp_path / "many/manifest.json").read_text())
    assert [entry["shard"] for entry in manifest["shards"]] == ["0/2", "1/2"]
    mined_tokens = sum(len(json.loads(line)["token_ids"]) for line in (tmp_path / "many/runs.jsonl").open())
    assert f"throughput: {mined_tokens} new tokens in " in many.stdout, many.stdout


def test_a_failed_worker_is_reported_with_its_log_and_resume_command(problems, tiny_dir, tmp_path):
    result = _mine(tiny_dir, "--problems", str(problems), "--devices", "cpu,nope", "--outdir", str(tmp_path / "run"))
    assert result.returncode == 1
    assert "worker 1/2 on nope failed" in result.stderr and "resume it alone:" in result.stderr
    assert (tmp_path / "run/shards/shard-1.log").is_file()
    assert not (tmp_path / "run/runs.jsonl").exists()  # nothing merged


def test_parse_devices():
    assert parse_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    with pytest.raises(ValueError):
        parse_devices(" , ")
