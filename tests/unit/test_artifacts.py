from __future__ import annotations

import os

import pytest

from cot_patching.runs import artifacts
from cot_patching.runs.artifacts import RunRecord, atomic_write_text, drop_torn_tail, find_pair, read_run_at, read_runs


def _record(problem_id="p", attempt=0, correct=False, parse_ok=True, text="Step 1: é 日本\nFinal Answer: 1"):
    return RunRecord(id=problem_id, attempt=attempt, temperature=0.0, top_p=0.95, seed=1, model="m", prompt="q",
                     text=text, final_answer="1", correct=correct, parse_ok=parse_ok, token_ids=[1, 2],
                     step_spans=[], final_answer_span=None, prompt_token_ids=[3], max_new_tokens=4,
                     finish_reason="stop")


def test_appended_lines_have_byte_offsets_that_read_back(tmp_path):
    path = tmp_path / "runs.jsonl"
    with artifacts.RunsAppender(path) as appender:
        offsets = [appender.append(_record(attempt=k)) for k in range(3)]
    assert offsets[0] == 0 and offsets[1] > len("Step 1: é 日本")  # bytes, not characters
    assert [read_run_at(path, o).attempt for o in offsets] == [0, 1, 2]
    assert [line.offset for line in read_runs(path)] == offsets
    with pytest.raises(artifacts.ArtifactError):
        read_run_at(path, offsets[1] + 3)


def test_torn_tail_is_dropped_and_ignored(tmp_path):
    path = tmp_path / "runs.jsonl"
    with artifacts.RunsAppender(path) as appender:
        appender.append(_record())
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"id": "p", "att')
    assert len(read_runs(path)) == 1
    assert drop_torn_tail(path) == len(b'{"id": "p", "att')
    assert path.read_bytes() == whole
    assert drop_torn_tail(path) == 0


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "summary.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["summary.json"]
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)


def test_find_pair_needs_a_parsed_incorrect_attempt():
    attempts = [_record(parse_ok=False), _record(correct=True), _record()]
    assert find_pair(attempts) == (1, 2)
    assert find_pair(attempts[:2]) is None
    assert find_pair(attempts[:2], pair_unparsed=True) == (1, 0)
