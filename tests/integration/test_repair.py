"""`repair` relabels a run written under older trace rules into exactly what mining from scratch writes now."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import ScriptedSampler

from cot_patching.mining.miner import MiningError, mine, run_attempt
from cot_patching.mining.repair import repair_run
from cot_patching.mining.settings import MineSettings
from cot_patching.mining.validate import validate_outdir
from cot_patching.problems import Problem
from cot_patching.runs import artifacts
from cot_patching.runs.files import write_json
from cot_patching.runs.pairing import build_pairs
from cot_patching.runs.records import read_pairs, read_runs
from cot_patching.runs.tally import build_summary, write_derived
from cot_patching.traces.analysis import TRACE_RULES_VERSION
from cot_patching.traces.prompt import build_prompt, encode_prompt

PROBLEMS = [
    Problem("p1", "Ann has 3 pens and buys 4. How many pens?", "7"),
    Problem("p2", "Bo has 2 cats and gets 3. How many cats?", "5"),
    Problem("p3", "Cy has 4 cups and buys 5. How many cups?", "9"),
]
# What the scripted decoder writes for (problem, attempt).
SCRIPT = {
    ("p1", 0): "Step 1: 3 + 4 = 7\nFinal Answer: He has 7 pens.",       # now correct (sentence); was incorrect
    ("p1", 1): "Step 1: 3 + 5 = 8\nFinal Answer: 8",                     # incorrect: the pair completes here now
    ("p1", 2): "Step 1: 3 + 4 = 7\nFinal Answer: 7",                     # the old rules' pair ended here
    ("p1", 3): "Step 1: 7\nFinal Answer: 7",
    ("p2", 0): "Step 1: 2 + 3 = 5\nFinal Answer: 5",
    ("p2", 1): "Step 1: hmm\nFinal Answer: <one token/number/string>",   # now unparsed; was the incorrect member
    ("p2", 2): "  - Step 1: 2 + 3 = 6\nStep 2: Final Answer: 6",         # a resume decodes this one
    ("p2", 3): "Step 1: 5\nFinal Answer: 5",
    ("p3", 0): "   Step 1: 4 + 5 = 9\nFinal Answer: 9",                  # old span began on the indentation
    ("p3", 1): "Step 1: 4 + 4 = 8\nFinal Answer: 8",
    ("p3", 2): "Step 1: 9\nFinal Answer: 9",
    ("p3", 3): "Step 1: 9\nFinal Answer: 9",
}
SETTINGS = MineSettings(model="scripted", problems_sha256="0" * 64, temperature_seq=(0.0, 0.9, 1.0), max_tries=4)


@pytest.fixture()
def scripted(smollm2_tokenizer: Any) -> tuple[Any, Any]:
    """A decoder that writes SCRIPT, and the model object it decodes for."""
    scripts = {p.id: [SCRIPT[(p.id, k)] for k in range(4)] for p in PROBLEMS}
    return SimpleNamespace(tokenizer=smollm2_tokenizer, info=None), ScriptedSampler(smollm2_tokenizer, scripts)


def _records(outdir: Path) -> dict[tuple[str, int], dict[str, Any]]:
    return {(line.record.id, line.record.attempt): asdict(line.record)
            for line in read_runs(outdir / artifacts.RUNS_FILE)}


def _pairs(outdir: Path) -> list[tuple[Any, ...]]:
    return [(p.id, p.correct_ref["attempt"], p.incorrect_ref["attempt"], p.steps_selected, p.n_attempts)
            for p in read_pairs(outdir / artifacts.PAIRS_FILE)]


def _write_old_run(outdir: Path, model: Any, sampler: Any, reference: Path) -> None:
    """The run the old rules wrote: p1 went to attempt 2, p2 stopped at 1, old labels and spans."""
    outdir.mkdir()
    old_labels = {("p1", 0): dict(correct=False, score_rule="string", normalized_answer="he has 7 pens"),
                  ("p2", 1): dict(correct=False, score_rule="string", normalized_answer="one token/number/string")}
    lines = []
    for problem, attempts in ((PROBLEMS[0], 3), (PROBLEMS[1], 2), (PROBLEMS[2], 2)):
        prompt = encode_prompt(model.tokenizer, build_prompt(problem.question))
        for attempt in range(attempts):
            record = run_attempt(model, problem, prompt, attempt, SETTINGS.schedule[attempt], SETTINGS, sampler)
            changes: dict[str, Any] = dict(old_labels.get((problem.id, attempt), {}))
            if changes:
                changes["parse_ok"] = True
            if (problem.id, attempt) == ("p3", 0):
                span = dict(record.step_spans[0], char_start=0)
                span["text"] = record.text[0:span["char_end"]]
                changes["step_spans"] = [span]
            lines.append(replace(record, **changes).to_line())
    (outdir / artifacts.RUNS_FILE).write_bytes(b"".join(lines))
    manifest = json.loads((reference / artifacts.MANIFEST_FILE).read_text())
    del manifest["settings"]["trace_rules_version"]
    write_json(outdir / artifacts.MANIFEST_FILE, manifest)
    runs = read_runs(outdir / artifacts.RUNS_FILE)
    pairs = build_pairs(runs, {p.id: p.question for p in PROBLEMS})
    write_derived(outdir, pairs, build_summary(runs, pairs))


def test_repair_then_resume_equals_mining_from_scratch(scripted, tmp_path):
    model, sampler = scripted
    reference = tmp_path / "fresh"
    mine(PROBLEMS, model, SETTINGS, reference, min_pairs=10, progress=False, sampler=sampler)
    assert _pairs(reference) == [("p1", 0, 1, {"early": {"from": "correct", "step_idx": 1},
                                                "late": {"from": "correct", "step_idx": 1}}, 2),
                                 ("p2", 0, 2, {"early": {"from": "correct", "step_idx": 1},
                                               "late": {"from": "correct", "step_idx": 1}}, 3),
                                 ("p3", 0, 1, {"early": {"from": "correct", "step_idx": 1},
                                               "late": {"from": "correct", "step_idx": 1}}, 2)]
    old = tmp_path / "old"
    _write_old_run(old, model, sampler, reference)
    assert any("trace rules version 1" in v.message for v in validate_outdir(old, model.tokenizer))
    with pytest.raises(MiningError, match="cot-patching repair"):
        mine(PROBLEMS, model, SETTINGS, old, min_pairs=10, progress=False, sampler=sampler)

    report = repair_run(old, model.tokenizer)
    assert (report.relabelled, report.respanned, report.reopened) == (2, 1, ["p2"])
    assert report.set_aside == ["p1 attempt 2: made after the problem's pair was complete at attempt 1"]
    aside = [json.loads(line) for line in (old / artifacts.SET_ASIDE_FILE).read_text().splitlines()]
    assert [(e["record"]["id"], e["record"]["attempt"]) for e in aside] == [("p1", 2)]
    assert validate_outdir(old, model.tokenizer) == []
    manifest = json.loads((old / artifacts.MANIFEST_FILE).read_text())
    assert manifest["settings"]["trace_rules_version"] == TRACE_RULES_VERSION == 3
    assert manifest["repairs"][-1]["from_trace_rules_version"] == 1

    runs_bytes = (old / artifacts.RUNS_FILE).read_bytes()
    again = repair_run(old, model.tokenizer)  # idempotent: nothing relabelled or set aside twice
    assert (again.relabelled, again.respanned, again.set_aside) == (0, 0, [])
    assert (old / artifacts.RUNS_FILE).read_bytes() == runs_bytes
    assert len((old / artifacts.SET_ASIDE_FILE).read_text().splitlines()) == 1

    mine(PROBLEMS, model, SETTINGS, old, min_pairs=10, progress=False, sampler=sampler)
    assert _records(old) == _records(reference)
    assert _pairs(old) == _pairs(reference)
    assert json.loads((old / artifacts.SUMMARY_FILE).read_text()) == json.loads(
        (reference / artifacts.SUMMARY_FILE).read_text())
    assert validate_outdir(old, model.tokenizer) == []


def test_a_damaged_middle_line_is_set_aside_and_a_resume_decodes_it_again(scripted, tmp_path):
    model, sampler = scripted
    reference = tmp_path / "fresh"
    mine(PROBLEMS, model, SETTINGS, reference, min_pairs=10, progress=False, sampler=sampler)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in (artifacts.RUNS_FILE, artifacts.PAIRS_FILE, artifacts.PAIRS_CSV, artifacts.SUMMARY_FILE,
                 artifacts.MANIFEST_FILE):
        (damaged / name).write_bytes((reference / name).read_bytes())
    lines = (damaged / artifacts.RUNS_FILE).read_bytes().splitlines(keepends=True)
    lines[0] = lines[0][:40] + b"\n"  # p1 attempt 0, cut mid-record
    (damaged / artifacts.RUNS_FILE).write_bytes(b"".join(lines))
    before = {p.name: p.read_bytes() for p in damaged.iterdir()}

    violations = validate_outdir(damaged, model.tokenizer)
    assert any(v.line == 1 and "not valid JSON" in v.message for v in violations)
    with pytest.raises(MiningError, match="runs.jsonl:1: not valid JSON.*cot-patching repair"):
        mine(PROBLEMS, model, SETTINGS, damaged, min_pairs=10, progress=False, sampler=sampler)
    assert {p.name: p.read_bytes() for p in damaged.iterdir()} == before  # a refused resume changes nothing

    report = repair_run(damaged, model.tokenizer)
    assert report.set_aside[0].startswith("runs.jsonl line 1: not valid JSON")
    assert report.set_aside[1:] == ["p1 attempt 1: attempt 1 follows attempts []"]
    assert report.reopened == ["p1"]
    mine(PROBLEMS, model, SETTINGS, damaged, min_pairs=10, progress=False, sampler=sampler)
    assert _records(damaged) == _records(reference)
    assert _pairs(damaged) == _pairs(reference)
    assert validate_outdir(damaged, model.tokenizer) == []


def test_a_torn_set_aside_tail_is_dropped_before_appending_and_validate_reports_it(scripted, tmp_path):
    """Issue 32.4: a set-aside line cut by a full disk is neither kept nor appended after; validate sees it."""
    model, sampler = scripted
    reference = tmp_path / "fresh"
    mine(PROBLEMS, model, SETTINGS, reference, min_pairs=10, progress=False, sampler=sampler)
    old = tmp_path / "old"
    _write_old_run(old, model, sampler, reference)
    (old / artifacts.SET_ASIDE_FILE).write_text('{"reason": "cut by a full disk", "record": {"id": "p')
    violations = validate_outdir(old, model.tokenizer)
    assert any(v.file == artifacts.SET_ASIDE_FILE and "torn last line" in v.message for v in violations)

    repair_run(old, model.tokenizer)
    aside = (old / artifacts.SET_ASIDE_FILE).read_text()
    assert aside.endswith("\n") and [json.loads(line)["record"]["attempt"] for line in aside.splitlines()] == [2]
    assert validate_outdir(old, model.tokenizer) == []


def _old_run_twice(scripted: tuple[Any, Any], tmp_path: Path, old_parent: Path) -> tuple[Path, Path]:
    """The old-rules run written twice: OLD_PARENT/old (to damage) and tmp_path/control (repaired undisturbed)."""
    model, sampler = scripted
    reference = tmp_path / "fresh"
    mine(PROBLEMS, model, SETTINGS, reference, min_pairs=10, progress=False, sampler=sampler)
    old, control = old_parent / "old", tmp_path / "control"
    _write_old_run(old, model, sampler, reference)
    _write_old_run(control, model, sampler, reference)
    return old, control


def test_a_repair_killed_in_its_write_phase_keeps_its_record_and_the_rerun_finishes_it(scripted, tmp_path,
                                                                                       monkeypatch):
    """Issue 32.5: runs.jsonl rewritten, then a kill: the rerun records what changed, not `relabelled 0`."""
    model, _ = scripted
    old, control = _old_run_twice(scripted, tmp_path, tmp_path)
    expected = repair_run(control, model.tokenizer)

    import cot_patching.mining.repair as repair_module

    real_write_derived = write_derived

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies right after runs.jsonl was rewritten

    monkeypatch.setattr(repair_module, "write_derived", killed)
    with pytest.raises(KeyboardInterrupt):
        repair_run(old, model.tokenizer)
    manifest = json.loads((old / artifacts.MANIFEST_FILE).read_text())
    assert manifest["repairs"][-1]["complete"] is False
    assert manifest["repairs"][-1]["report"]["relabelled"] == expected.relabelled == 2
    monkeypatch.setattr(repair_module, "write_derived", real_write_derived)

    finished = repair_run(old, model.tokenizer)
    assert (finished.relabelled, finished.respanned, finished.set_aside) == \
        (expected.relabelled, expected.respanned, expected.set_aside)
    manifest = json.loads((old / artifacts.MANIFEST_FILE).read_text())
    assert len(manifest["repairs"]) == 1 and manifest["repairs"][0]["complete"] is True
    for name in (artifacts.RUNS_FILE, artifacts.PAIRS_FILE, artifacts.SUMMARY_FILE, artifacts.SET_ASIDE_FILE):
        assert (old / name).read_bytes() == (control / name).read_bytes(), name
    assert validate_outdir(old, model.tokenizer) == []


@pytest.fixture()
def small_disk(tmp_path):
    """A 64 KiB tmpfs (needs root to mount; skipped elsewhere), unmounted after the test."""
    import subprocess

    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_leaves_whole_files_and_the_rerun_on_room_is_clean(scripted, tmp_path, small_disk):
    """Issue 32.4/32.9: repair, atomic rewrites and appends on a full disk: one error naming the file, no temp left,
    nothing torn kept; with room again the same repair gives the files a big disk gives."""
    model, _ = scripted
    old, control = _old_run_twice(scripted, tmp_path, small_disk)
    with open(small_disk / "filler", "wb", buffering=0) as filler:  # fill the disk, then give back one page: less than needed
        try:
            while True:
                filler.write(b"x" * 1024)
        except OSError:
            pass
    with open(small_disk / "filler", "r+b") as filler:
        filler.truncate(max(0, (small_disk / "filler").stat().st_size - 8192))
    with pytest.raises(OSError, match="cannot (write|append to) .*No space left on device"):
        repair_run(old, model.tokenizer)
    assert not [p.name for p in old.iterdir() if p.name.endswith(".tmp")]
    (small_disk / "filler").unlink()
    repair_run(old, model.tokenizer)
    expected = repair_run(control, model.tokenizer)
    assert expected.relabelled == 2
    for name in (artifacts.RUNS_FILE, artifacts.PAIRS_FILE, artifacts.SUMMARY_FILE, artifacts.SET_ASIDE_FILE):
        assert (old / name).read_bytes() == (control / name).read_bytes(), name
    assert validate_outdir(old, model.tokenizer) == []
