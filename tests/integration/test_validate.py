from __future__ import annotations

import json

import pytest
from helpers import mine_scripted_pairs

from cot_patching.mining.validate import validate_outdir
from cot_patching.runs import artifacts
from cot_patching.runs.records import read_runs


@pytest.fixture()
def good(tiny, tmp_path):
    mine_scripted_pairs(tiny, tmp_path, n=3)
    return tmp_path


def _edit_run(outdir, index, edit):
    path = outdir / artifacts.RUNS_FILE
    lines = path.read_text().splitlines()
    record = json.loads(lines[index])
    edit(record)
    lines[index] = json.dumps(record, ensure_ascii=False)
    path.write_text("\n".join(lines) + "\n")


def test_good_output_passes(tiny, good):
    assert validate_outdir(good, tiny.tokenizer) == []
    assert validate_outdir(good) == []


def _set(key, value):
    return lambda record: record.__setitem__(key, value)


def _span(record):
    record["step_spans"][0]["tok_end"] += 1


def _step_text(record):
    record["step_spans"][1]["text"] = "Step 2: changed"


def _token(record):
    record["token_ids"][2] += 1


@pytest.mark.parametrize("index, edit, message", [
    (0, _set("seed", 12345), "is not sha256"),
    (1, _set("temperature", 0.5), "schedule says 0.9"),
    (0, _span, "are not the smallest cover"),
    (1, _step_text, "differs from text[char_start:char_end]"),
    (0, _token, "text != decode(token_ids)"),
    (1, _set("correct", False), "label (correct, rule, normalized) is (False"),
    (0, _set("top_p", 0.9), "top_p 0.9 differs"),
])
def test_corrupted_runs_are_reported_with_their_line(tiny, good, index, edit, message):
    _edit_run(good, index, edit)
    violations = validate_outdir(good, tiny.tokenizer)
    assert any(message in v.message and v.file == artifacts.RUNS_FILE and v.line == index + 1 for v in violations), \
        [str(v) for v in violations]


def test_wrong_runs_offset_in_pairs(tiny, good):
    path = good / artifacts.PAIRS_FILE
    lines = path.read_text().splitlines()
    pair = json.loads(lines[1])
    pair["correct_ref"]["runs_offset"] += 1
    lines[1] = json.dumps(pair)
    path.write_text("\n".join(lines) + "\n")
    violations = validate_outdir(good, tiny.tokenizer)
    assert any(v.file == artifacts.PAIRS_FILE and v.line == 2 and "runs_offset" in v.message for v in violations)


def test_a_wrong_selection_of_the_incorrect_traces_steps_is_reported(tiny, good):
    path = good / artifacts.PAIRS_FILE
    lines = path.read_text().splitlines()
    pair = json.loads(lines[0])
    assert pair["incorrect_steps_selected"], pair  # written when the pair was made
    pair["incorrect_steps_selected"]["late"]["step_idx"] += 1
    lines[0] = json.dumps(pair)
    path.write_text("\n".join(lines) + "\n")
    violations = validate_outdir(good, tiny.tokenizer)
    assert any(v.file == artifacts.PAIRS_FILE and v.line == 1 and "incorrect_steps_selected" in v.message
               for v in violations), [str(v) for v in violations]


def test_csv_and_summary_inconsistencies(tiny, good):
    csv = good / artifacts.PAIRS_CSV
    csv.write_text(csv.read_text().replace("q1,2,", "q1,3,"))
    summary = json.loads((good / artifacts.SUMMARY_FILE).read_text())
    summary["pairs_found"] = 7
    (good / artifacts.SUMMARY_FILE).write_text(json.dumps(summary))
    violations = [str(v) for v in validate_outdir(good, tiny.tokenizer)]
    assert any(v.startswith("pairs_summary.csv:3:") for v in violations)
    assert any("summary.json: pairs_found is 7" in v for v in violations)


def test_missing_pair_line_and_torn_line(tiny, good):
    path = good / artifacts.PAIRS_FILE
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))
    with open(good / artifacts.RUNS_FILE, "a") as handle:
        handle.write('{"id": "q9"')
    violations = [str(v) for v in validate_outdir(good, tiny.tokenizer)]
    assert any("torn last line" in v for v in violations)
    assert any("pairs ['q0', 'q1'] but runs.jsonl pairs ['q0', 'q1', 'q2']" in v for v in violations)


def test_attempt_after_pair_is_reported(tiny, good):
    path = good / artifacts.RUNS_FILE
    lines = path.read_text().splitlines()
    extra = json.loads(lines[1])
    extra["attempt"] = 2
    from cot_patching.decoding.sampling import attempt_seed
    extra["seed"] = attempt_seed(extra["id"], 2)
    extra["temperature"] = 0.9
    lines.insert(2, json.dumps(extra))
    path.write_text("\n".join(lines) + "\n")
    violations = [str(v) for v in validate_outdir(good, tiny.tokenizer)]
    assert any("runs.jsonl:3: q0: attempt 2 made after a pair was found" in v for v in violations), violations


def test_cli_validate_exit_codes(tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from cot_patching.cli import app
    from cot_patching.models.loading import load_model

    model = load_model(str(tiny_dir), device="cpu")
    outdir = tmp_path / "out"
    mine_scripted_pairs(model, outdir, n=2)
    runner = CliRunner()
    result = runner.invoke(app, ["validate", str(outdir)])
    assert result.exit_code == 0 and "OK:" in result.output, result.output
    _edit_run(outdir, 0, _set("seed", 1))
    result = runner.invoke(app, ["validate", str(outdir)])
    assert result.exit_code == 1 and "runs.jsonl:1: q0 attempt 0: seed 1 is not" in result.output


def test_interrupted_run_mid_problem_is_still_consistent(tiny, tmp_path):
    from helpers import CORRECT, UNPARSED, WRONG, ScriptedSampler

    from cot_patching.mining.miner import mine
    from cot_patching.mining.settings import MineSettings
    from cot_patching.problems import Problem

    problems = [Problem("m0", "What is 2 + 3?", "5")]
    sampler = ScriptedSampler(tiny.tokenizer, {"m0": [UNPARSED, WRONG, CORRECT]}, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        mine(problems, tiny, MineSettings(model="tiny", problems_sha256="x"), tmp_path, progress=False,
             sampler=sampler)
    assert len(read_runs(tmp_path / artifacts.RUNS_FILE)) == 2
    assert validate_outdir(tmp_path, tiny.tokenizer) == []
