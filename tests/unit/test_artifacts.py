from __future__ import annotations

import json
import os
from dataclasses import asdict

import pytest

from cot_patching.runs import artifacts
from cot_patching.runs.directory import load_pairs
from cot_patching.runs.files import ArtifactError, atomic_write_text, drop_torn_tail
from cot_patching.runs.pairing import make_pair
from cot_patching.runs.records import RunLine, RunRecord, RunsAppender, pair_problem, read_run_at, read_runs
from cot_patching.runs.stop_rule import find_pair


def _record(problem_id="p", attempt=0, correct=False, parse_ok=True, text="Step 1: é 日本\nFinal Answer: 1"):
    return RunRecord(id=problem_id, attempt=attempt, temperature=0.0, top_p=0.95, seed=1, model="m", prompt="q",
                     text=text, final_answer="1", correct=correct, parse_ok=parse_ok, token_ids=[1, 2],
                     step_spans=[], final_answer_span=None, prompt_token_ids=[3], max_new_tokens=4,
                     finish_reason="stop")


def test_appended_lines_have_byte_offsets_that_read_back(tmp_path):
    path = tmp_path / "runs.jsonl"
    with RunsAppender(path) as appender:
        offsets = [appender.append(_record(attempt=k)) for k in range(3)]
    assert offsets[0] == 0 and offsets[1] > len("Step 1: é 日本")  # bytes, not characters
    assert [read_run_at(path, o).attempt for o in offsets] == [0, 1, 2]
    assert [line.offset for line in read_runs(path)] == offsets
    with pytest.raises(ArtifactError):
        read_run_at(path, offsets[1] + 3)


def test_torn_tail_is_dropped_and_ignored(tmp_path):
    path = tmp_path / "runs.jsonl"
    with RunsAppender(path) as appender:
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


def test_an_atomic_write_into_a_missing_folder_names_the_file_asked_for_not_its_temp(tmp_path):
    with pytest.raises(OSError, match=r"cannot write .*missing/summary\.json: ") as caught:
        atomic_write_text(tmp_path / "missing" / "summary.json", "new")
    assert ".tmp" not in str(caught.value) and not (tmp_path / "missing").exists()


def test_find_pair_needs_a_parsed_incorrect_attempt():
    attempts = [_record(parse_ok=False), _record(correct=True), _record()]
    assert find_pair(attempts) == (1, 2)
    assert find_pair(attempts[:2]) is None
    assert find_pair(attempts[:2], pair_unparsed=True) == (1, 0)


WRONG_TRACE = "Step 1: Tom has 3 apples.\nStep 2: He buys 4 more, 3 * 4 = 12.\nFinal Answer: 12"
RIGHT_TRACE = "Step 1: Tom has 3 apples.\nStep 2: He buys 4 more, 3 + 4 = 7.\nStep 3: Done.\nFinal Answer: 7"


def _pair_lines(incorrect_text=WRONG_TRACE, parse_ok=True):
    wrong = _record(attempt=0, correct=False, parse_ok=parse_ok, text=incorrect_text)
    right = _record(attempt=1, correct=True, text=RIGHT_TRACE)
    return [RunLine(0, wrong), RunLine(100, right)]


def test_a_pair_record_carries_both_traces_selected_steps():
    pair = make_pair("p", _pair_lines(), "q")
    assert pair.steps_selected == {"early": {"from": "correct", "step_idx": 1},
                                   "late": {"from": "correct", "step_idx": 3}}
    assert pair.incorrect_steps_selected == {"early": {"from": "incorrect", "step_idx": 1},
                                             "late": {"from": "incorrect", "step_idx": 2}}
    unparsed = make_pair("p", _pair_lines("no steps here", parse_ok=False), "q", pair_unparsed=True)
    assert unparsed.incorrect_steps_selected == {}
    assert pair_problem({**asdict(pair), "incorrect_steps_selected": {"early": 1}}) is not None
    assert pair_problem(asdict(pair)) is None


def test_pairs_written_before_the_incorrect_selection_load_with_it(tmp_path):
    """An old pairs.jsonl line (no incorrect_steps_selected) loads; its incorrect trace's steps come from the rule."""
    lines = _pair_lines()
    runs = tmp_path / artifacts.RUNS_FILE
    with RunsAppender(runs) as appender:
        lines = [RunLine(appender.append(line.record), line.record) for line in lines]
    pair = make_pair("p", lines, "q")
    old = asdict(pair)
    del old["incorrect_steps_selected"]
    (tmp_path / artifacts.PAIRS_FILE).write_text(json.dumps(old) + "\n")
    (loaded,) = load_pairs(tmp_path)
    assert loaded.pair.incorrect_steps_selected is None
    assert loaded.selected_steps("incorrect") == (1, 2) and loaded.selected_steps("correct") == (1, 3)
    (tmp_path / artifacts.PAIRS_FILE).write_text(pair.to_line())
    (new,) = load_pairs(tmp_path)
    assert new.pair == pair and new.selected_steps("incorrect") == (1, 2)
