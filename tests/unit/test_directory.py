"""The run-directory object: records by (id, attempt), offsets only an index, the lock, where files live."""

from __future__ import annotations

import pytest
from test_artifacts import _pair_lines, _record

from cot_patching.runs import artifacts
from cot_patching.runs.directory import RunDirectory, RunInUseError, load_pairs
from cot_patching.runs.files import ArtifactError
from cot_patching.runs.pairing import make_pair
from cot_patching.runs.records import RunLine


def _write_run(root):
    run = RunDirectory(root)
    with run.appender() as appender:
        lines = [RunLine(appender.append(line.record), line.record) for line in _pair_lines()]
    pair = make_pair("p", lines, "q")
    run.pairs_path.write_text(pair.to_line())
    return run, lines, pair


def test_records_are_found_by_key_and_offsets_are_only_a_hint(tmp_path):
    run, lines, pair = _write_run(tmp_path)
    assert run.offsets() == {("p", 0): lines[0].offset, ("p", 1): lines[1].offset}
    assert run.record("p", 1, offset=lines[1].offset) == lines[1].record
    assert run.record("p", 1, offset=lines[0].offset) == lines[1].record  # a stale offset: found by the index
    assert run.record("p", 1, offset=3) == lines[1].record  # not even a line start
    with pytest.raises(ArtifactError, match="no attempt 5 of 'p'"):
        run.record("p", 5)


def test_pairs_load_after_runs_jsonl_is_rewritten_with_other_offsets(tmp_path):
    """A line added in front (as when files are concatenated) moves every offset; the pair still loads exactly."""
    run, lines, pair = _write_run(tmp_path)
    before = [(p.correct, p.incorrect) for p in load_pairs(tmp_path)]
    other = _record(problem_id="other", attempt=0)
    run.runs_path.write_bytes(other.to_line() + run.runs_path.read_bytes())
    assert run.offsets()[("p", 0)] == lines[0].offset + len(other.to_line())  # the index was rebuilt
    assert [(p.correct, p.incorrect) for p in run.loaded_pairs()] == before


def test_the_directory_knows_its_files_and_its_lock(tmp_path):
    run = RunDirectory(tmp_path)
    assert not run.is_run() and run.runs_path == tmp_path / artifacts.RUNS_FILE
    assert run.activations_dir == tmp_path / artifacts.ACTIVATIONS_DIR
    with pytest.raises(ArtifactError, match="not a mining output directory"):
        run.loaded_pairs()
    with run.lock():
        assert (tmp_path / artifacts.LOCK_FILE).exists()
        with pytest.raises(RunInUseError, match="in use by another process"):
            with RunDirectory(tmp_path).lock():
                pass
    run.check_not_locked()
