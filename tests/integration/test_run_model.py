"""Commands that load a run's model again find it where it was, or where `--model` says, and only if it is the same."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from cot_patching.cli import app
from cot_patching.models.loading import EMBEDDED_FILE, embedded_model_dir

runner = CliRunner()


@pytest.mark.transformer_lens  # mines with the embedded model through the CLI
def test_reproduce_with_a_moved_model_from_another_directory(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    shutil.copy(embedded_model_dir() / EMBEDDED_FILE, work / "models" / "smol.gguf")
    problems = work / "problems.json"
    problems.write_text(json.dumps([{"id": "m0", "question": "Ann has 3 pens and buys 2. How many?",
                                     "gold_answer": "5"}]))
    monkeypatch.chdir(work)
    mined = runner.invoke(app, ["mine", "--no-progress", "--problems", "problems.json", "--model", "models/smol.gguf",
                                "--outdir", "run", "--max-tries", "1", "--max-new-tokens", "8", "--device", "cpu"])
    assert mined.exit_code == 0, mined.output
    assert json.loads((work / "run" / "manifest.json").read_text())["settings"]["model"] == "models/smol.gguf"

    moved = tmp_path / "elsewhere" / "smol-copy.gguf"
    moved.parent.mkdir()
    shutil.move(work / "models" / "smol.gguf", moved)
    other = tmp_path / "other-cwd"
    other.mkdir()
    monkeypatch.chdir(other)
    run_dir = str(work / "run")

    missing = runner.invoke(app, ["reproduce", "--outdir", run_dir, "--all-runs"])
    assert missing.exit_code == 2
    assert "is not found from" in missing.output and "pass --model" in missing.output
    assert "Traceback" not in missing.output

    replay = runner.invoke(app, ["reproduce", "--outdir", run_dir, "--all-runs", "--model", str(moved)])
    assert replay.exit_code == 0, replay.output
    assert f"model: {moved.resolve()}" in replay.output
    assert "1/1 attempts reproduced exactly" in replay.output
    valid = runner.invoke(app, ["validate", run_dir, "--model", str(moved)])
    assert valid.exit_code == 0 and "OK:" in valid.output, valid.output

    wrong = tmp_path / "wrong.gguf"  # same size, one byte changed: another model as far as the run is concerned
    data = bytearray(moved.read_bytes())
    data[-1] ^= 0xFF
    wrong.write_bytes(bytes(data))
    for command in (["reproduce", "--outdir", run_dir, "--all-runs"], ["validate", run_dir], ["repair", run_dir]):
        refused = runner.invoke(app, [*command, "--model", str(wrong)])
        assert refused.exit_code == 2, (command, refused.output)
        lines = [line for line in refused.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "is not this run's model" in lines[0], refused.output
    assert json.loads((work / "run" / "manifest.json").read_text())["settings"]["model"] == "models/smol.gguf"
    no_pairs = runner.invoke(app, ["cache-activations", "--results", run_dir, "--model", str(moved)])
    assert no_pairs.exit_code == 2 and "has no pairs yet: nothing to cache" in no_pairs.output, no_pairs.output
