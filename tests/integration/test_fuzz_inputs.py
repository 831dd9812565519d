"""Generated bad inputs: every one ends in exit 2 (or a violation) with one `error:` line, no traceback, and leaves
the disk as it was."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from helpers import CORRECT, WRONG, ScriptedSampler
from typer.testing import CliRunner

from cot_patching.cli import app
from cot_patching.mining.miner import mine
from cot_patching.mining.settings import MineSettings
from cot_patching.mining.validate import validate_outdir
from cot_patching.problems import Problem
from cot_patching.runs import artifacts

runner = CliRunner()

BAD_INTS = [12.5, "eight", [8], True, 0, -3, None, "8"]
BAD_VALUES: dict[str, list[object]] = {
    "max-tries": BAD_INTS,
    "min-pairs": BAD_INTS,
    "max-new-tokens": BAD_INTS,
    "top-p": [[0.95], "0.9", 0, 1.5, -0.1, True, None, "nan", float("nan")],
    "temperature-seq": ["0.0,1e-45", "a,b", "", [0.0, "x"], "-1", "inf", "0.0,nan", True, "0.0,0.0001", None],
    "strict-format": ["yes", 1, 0.0, [True], None],
    "pair-unparsed": ["no", 0, [False]],
    "load-in-4bit": ["sure", 2],
    "dtype": [123, "fp8", [None]],
    "backend": [5, "torch", ["bridge"]],
    "device": [5, ["cuda"], 1.5],
    "problems": [5, "missing.json", ["data/x.json"]],
    "model": [5, "no/such/path.gguf", "not a model", "./missing-dir"],
    "outdir": [5, [1]],
}


def _cases() -> list[tuple[str, object]]:
    return [(key, value) for key, values in BAD_VALUES.items() for value in values]


def _problems(folder: Path) -> Path:
    path = folder / "problems.json"
    path.write_text(json.dumps([{"id": "f0", "question": "What is 2 + 3?", "gold_answer": "5"}]))
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_clean_refusal(result: object) -> None:
    output = result.output  # type: ignore[attr-defined]
    assert result.exit_code == 2, output  # type: ignore[attr-defined]
    assert "Traceback" not in output, output
    assert len([line for line in output.splitlines() if line.startswith("error:")]) == 1, output


@pytest.mark.parametrize("key, value", _cases(), ids=lambda v: repr(v)[:20])
def test_bad_config_values_are_refused_before_anything_is_loaded_or_written(tmp_path, monkeypatch, key, value):
    monkeypatch.chdir(tmp_path)
    _problems(tmp_path)
    config = {"problems": "problems.json", "model": "embedded", "outdir": "out", "max-tries": 1,
              "max-new-tokens": 4, key: value}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    before = _snapshot(tmp_path)
    result = runner.invoke(app, ["mine", "--config", "config.yaml", "--no-progress"])
    _assert_clean_refusal(result)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("flags", [
    ["--max-tries", "0"], ["--top-p", "2"], ["--temperature-seq", "0.0,1e-45"], ["--max-new-tokens", "-1"],
    ["--min-pairs", "0"], ["--temperature-seq", ","], ["--dtype", "int4"], ["--backend", "jax"],
    ["--problems", "nope.json"], ["--model", "missing/model.gguf"],
])
def test_bad_flags_are_refused_cleanly(tmp_path, monkeypatch, flags):
    monkeypatch.chdir(tmp_path)
    _problems(tmp_path)
    before = _snapshot(tmp_path)
    result = runner.invoke(app, ["mine", "--problems", "problems.json", "--model", "embedded", "--outdir", "out",
                                 "--no-progress", *flags])
    _assert_clean_refusal(result)
    assert _snapshot(tmp_path) == before


PROBLEM_FILES = [
    b"not json", b"{}", b"[]", b"[1, 2]", b'[{"id": "a"}]', b'[{"id": "a", "question": "q"}]', b'[{"id": "a", "question": "q", "gold_answer": "seven"}]',
    b'[{"id": "a", "question": "q", "gold_answer": "1"}, {"id": "a", "question": "r", "gold_answer": "2"}]',
    b"\xff\xfe\x00", b'[{"id": "a", "question": "", "gold_answer": "1"}]',
]


@pytest.mark.parametrize("content", PROBLEM_FILES, ids=lambda c: repr(c)[:20])
def test_bad_problem_files_are_refused_cleanly(tmp_path, monkeypatch, content):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "problems.json").write_bytes(content)
    before = _snapshot(tmp_path)
    result = runner.invoke(app, ["mine", "--problems", "problems.json", "--model", "embedded", "--outdir", "out",
                                 "--no-progress"])
    _assert_clean_refusal(result)
    assert _snapshot(tmp_path) == before


def _mined_run(tokenizer: object, folder: Path) -> Path:
    problems = [Problem(f"d{i}", f"What is 2 + 3? ({i})", "5") for i in range(3)]
    scripts = {p.id: [WRONG, CORRECT] for p in problems}
    mine(problems, SimpleNamespace(tokenizer=tokenizer, info=None), MineSettings(model="scripted",
         problems_sha256="d" * 64), folder, progress=False, sampler=ScriptedSampler(tokenizer, scripts))
    return folder


def _damage(rng: random.Random, data: bytes) -> bytes:
    """One random damage to one line of a JSONL file."""
    lines = data.splitlines(keepends=True)
    i = rng.randrange(len(lines))
    line = lines[i]
    kind = rng.randrange(6)
    if kind == 0:  # cut mid-line
        lines[i] = line[: rng.randrange(1, max(2, len(line) - 1))] + b"\n"
    elif kind == 1:  # not UTF-8
        lines[i] = b"\xff" + line
    else:
        record = json.loads(line)
        key = rng.choice(sorted(record))
        if kind == 2:
            if key == "incorrect_steps_selected":  # pair records written before it lack it: not damage
                key = "steps_selected"
            del record[key]
        elif kind == 3:
            value = rng.choice(["x", -1, None, [1], {"a": 1}, 10**30, True])
            if key == "incorrect_steps_selected" and value is None:  # null: not recorded (older pairs), not damage
                value = "x"
            record[key] = value
        elif kind == 4 and "token_ids" in record:
            record["token_ids"] = record["token_ids"][:2] + [10**9] + record["token_ids"][2:]
        else:
            for ref in ("correct_ref", "incorrect_ref"):
                if ref in record:
                    record[ref]["runs_offset"] = rng.choice([-5, "12", 10**9, 3.5])
            record["steps_selected"] = rng.choice([{}, {"early": {}}, None, record.get("steps_selected")])
        lines[i] = (json.dumps(record) + "\n").encode()
    return b"".join(lines)


def _same_records(a: bytes, b: bytes) -> bool:
    try:
        return [json.loads(x) for x in a.splitlines()] == [json.loads(x) for x in b.splitlines()]
    except ValueError:
        return False


@pytest.mark.parametrize("seed", range(40))
def test_damaged_run_files_give_violations_or_one_error_line(smollm2_tokenizer, tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    run = _mined_run(smollm2_tokenizer, tmp_path / "run")
    target = run / (artifacts.RUNS_FILE if seed % 2 == 0 else artifacts.PAIRS_FILE)
    damaged = _damage(rng, target.read_bytes())
    if _same_records(damaged, target.read_bytes()):
        pytest.skip("this damage left the records as they were")
    target.write_bytes(damaged)
    before = _snapshot(run)
    violations = validate_outdir(run, smollm2_tokenizer)
    assert violations, f"damage went unnoticed: {damaged[:300]!r}"
    validated = runner.invoke(app, ["validate", str(run), "--no-tokens"])  # token checks need the tokenizer
    assert validated.exit_code in (0, 1) and "Traceback" not in validated.output, validated.output
    for command in (["reproduce", "--outdir", str(run), "--all-pairs"],
                    ["cache-activations", "--results", str(run), "--no-progress"]):
        result = runner.invoke(app, command)
        assert result.exit_code in (1, 2) and "Traceback" not in result.output, (command, result.output)
        if result.exit_code == 2:
            assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1
    assert _snapshot(run) == before
