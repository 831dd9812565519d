from __future__ import annotations

import json

import pytest
from helpers import CORRECT, UNPARSED, WRONG, ScriptedSampler

from cot_patching.decoding.sampling import attempt_seed
from cot_patching.mining.miner import MiningError, mine
from cot_patching.mining.settings import MineSettings
from cot_patching.problems import Problem
from cot_patching.runs import artifacts
from cot_patching.runs.directory import RunInUseError
from cot_patching.runs.pairing import build_pairs
from cot_patching.runs.records import read_run_at, read_runs
from cot_patching.runs.tally import build_summary, pairs_csv

PROBLEMS = [Problem(f"p{i}", f"What is 2 + 3? ({i})", "5", "test") for i in range(4)]


def settings(**overrides):
    return MineSettings(model="tiny", problems_sha256="x", **overrides)


def runs_of(outdir):
    return [line.record for line in read_runs(outdir / artifacts.RUNS_FILE)]


def test_stop_rule_and_schedule(tiny, tmp_path):
    scripts = {
        "p0": [CORRECT, WRONG, CORRECT],              # pair after 2 attempts
        "p1": [WRONG, UNPARSED, WRONG, CORRECT],      # pair after 4 attempts
        "p2": [UNPARSED, CORRECT, UNPARSED, WRONG],   # unparsed does not complete a pair
        "p3": [CORRECT] * 8,                          # never a pair: all 8 tries used
    }
    sampler = ScriptedSampler(tiny.tokenizer, scripts)
    result = mine(PROBLEMS, tiny, settings(), tmp_path, min_pairs=10, progress=False, sampler=sampler)
    runs = runs_of(tmp_path)
    assert [(r.id, r.attempt) for r in runs if r.id == "p0"] == [("p0", 0), ("p0", 1)]
    assert len([r for r in runs if r.id == "p2"]) == 4
    assert len([r for r in runs if r.id == "p3"]) == 8
    assert [r.temperature for r in runs if r.id == "p3"] == [0.0, 0.9, 0.9, 1.0, 1.0, 0.7, 0.7, 0.5]
    assert all(r.seed == attempt_seed(r.id, r.attempt) for r in runs)
    pairs = {p.id: p for p in result.pairs}
    assert set(pairs) == {"p0", "p1", "p2"}
    assert (pairs["p1"].correct_ref["attempt"], pairs["p1"].incorrect_ref["attempt"]) == (3, 0)
    assert (pairs["p2"].correct_ref["attempt"], pairs["p2"].incorrect_ref["attempt"]) == (1, 3)
    assert result.summary["pairs_found"] == 3 and result.summary["problems_processed"] == 4
    assert result.summary["avg_attempts_per_paired_item"] == pytest.approx((2 + 4 + 4) / 3)
    unparsed = next(r for r in runs if r.id == "p2" and r.attempt == 0)
    assert not unparsed.parse_ok and not unparsed.correct


def test_pair_unparsed_restores_literal_protocol(tiny, tmp_path):
    sampler = ScriptedSampler(tiny.tokenizer, {"p0": [UNPARSED, CORRECT]})
    result = mine(PROBLEMS[:1], tiny, settings(pair_unparsed=True), tmp_path, progress=False, sampler=sampler)
    assert result.pairs[0].incorrect_ref["attempt"] == 0


def test_min_pairs_stops_early(tiny, tmp_path):
    scripts = {p.id: [CORRECT, WRONG] for p in PROBLEMS}
    sampler = ScriptedSampler(tiny.tokenizer, scripts)
    result = mine(PROBLEMS, tiny, settings(), tmp_path, min_pairs=2, progress=False, sampler=sampler)
    assert result.summary["pairs_found"] == 2 and result.summary["problems_processed"] == 2


def test_pairs_refs_point_at_their_lines(tiny, tmp_path):
    sampler = ScriptedSampler(tiny.tokenizer, {"p0": [WRONG, WRONG, CORRECT], "p1": [CORRECT, WRONG]})
    result = mine(PROBLEMS[:2], tiny, settings(), tmp_path, progress=False, sampler=sampler)
    for pair in result.pairs:
        for ref in (pair.correct_ref, pair.incorrect_ref):
            record = read_run_at(tmp_path / artifacts.RUNS_FILE, ref["runs_offset"])
            assert (record.id, record.attempt) == (pair.id, ref["attempt"])
    csv_lines = (tmp_path / artifacts.PAIRS_CSV).read_text().splitlines()
    assert csv_lines[0] == "id,n_attempts,early_step_idx,late_step_idx,correct_attempt,incorrect_attempt"
    assert csv_lines[1:] == ["p0,3,1,1,2,0", "p1,2,1,1,0,1"]


def test_resume_after_interrupt_equals_uninterrupted(tiny, tmp_path):
    scripts = {"p0": [WRONG, UNPARSED, CORRECT], "p1": [UNPARSED] * 8, "p2": [CORRECT, WRONG], "p3": [WRONG, CORRECT]}
    reference = tmp_path / "reference"
    mine(PROBLEMS, tiny, settings(), reference, progress=False, sampler=ScriptedSampler(tiny.tokenizer, scripts))
    resumed = tmp_path / "resumed"
    for stop in (2, 5, 9):
        with pytest.raises(KeyboardInterrupt):
            mine(PROBLEMS, tiny, settings(), resumed, progress=False,
                 sampler=ScriptedSampler(tiny.tokenizer, scripts, fail_after=stop - len(runs_of(resumed))))
    final = mine(PROBLEMS, tiny, settings(), resumed, progress=False, sampler=ScriptedSampler(tiny.tokenizer, scripts))
    assert final.resumed_from == 9
    for name in (artifacts.RUNS_FILE, artifacts.PAIRS_FILE, artifacts.PAIRS_CSV, artifacts.SUMMARY_FILE):
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name


def test_torn_last_line_is_discarded(tiny, tmp_path):
    scripts = {"p0": [WRONG, CORRECT]}
    sampler = ScriptedSampler(tiny.tokenizer, scripts, fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        mine(PROBLEMS[:1], tiny, settings(), tmp_path, progress=False, sampler=sampler)
    with open(tmp_path / artifacts.RUNS_FILE, "ab") as handle:
        handle.write(b'{"id": "p0", "attempt": 1, "tex')
    result = mine(PROBLEMS[:1], tiny, settings(), tmp_path, progress=False,
                  sampler=ScriptedSampler(tiny.tokenizer, scripts))
    assert [(r.id, r.attempt) for r in runs_of(tmp_path)] == [("p0", 0), ("p0", 1)]
    assert result.summary["pairs_found"] == 1


def test_different_settings_are_refused(tiny, tmp_path):
    sampler = ScriptedSampler(tiny.tokenizer, {"p0": [CORRECT, WRONG]})
    mine(PROBLEMS[:1], tiny, settings(), tmp_path, manifest={}, progress=False, sampler=sampler)
    before = (tmp_path / artifacts.RUNS_FILE).read_bytes()
    with pytest.raises(MiningError, match="top_p is 0.95 there, 0.9 now"):
        mine(PROBLEMS[:1], tiny, settings(top_p=0.9), tmp_path, manifest={}, progress=False, sampler=sampler)
    assert (tmp_path / artifacts.RUNS_FILE).read_bytes() == before
    mine(PROBLEMS[:1], tiny, settings(top_p=0.9), tmp_path, manifest={}, overwrite=True, progress=False,
         sampler=ScriptedSampler(tiny.tokenizer, {"p0": [CORRECT, WRONG]}))
    assert json.loads((tmp_path / artifacts.MANIFEST_FILE).read_text())["settings"]["top_p"] == 0.9


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"node-7 " + str(os.getpid()).encode())
print("held", flush=True)
time.sleep(60)
"""


def test_second_process_is_refused_by_lock_and_a_dead_holder_frees_it(tiny, tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / artifacts.LOCK_FILE)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUseError, match=f"in use by another process \\(pid {holder.pid} on node-7\\)"):
            mine(PROBLEMS[:1], tiny, settings(), tmp_path, progress=False,
                 sampler=ScriptedSampler(tiny.tokenizer, {"p0": [CORRECT, WRONG]}))
        assert not (tmp_path / artifacts.MANIFEST_FILE).exists()  # a refused run writes nothing
    finally:
        holder.kill()  # kill -9: the kernel drops its lock, the file (and its stale text) stays
        holder.wait()
    result = mine(PROBLEMS[:1], tiny, settings(), tmp_path, progress=False,
                  sampler=ScriptedSampler(tiny.tokenizer, {"p0": [CORRECT, WRONG]}))
    assert result.summary["pairs_found"] == 1


def test_a_lock_file_nobody_holds_is_not_a_lock(tiny, tmp_path):
    (tmp_path / artifacts.LOCK_FILE).write_text("some-other-node 4242")  # left by a node that died
    result = mine(PROBLEMS[:1], tiny, settings(), tmp_path, progress=False,
                  sampler=ScriptedSampler(tiny.tokenizer, {"p0": [CORRECT, WRONG]}))
    assert result.summary["pairs_found"] == 1 and (tmp_path / artifacts.LOCK_FILE).read_text() == ""


def test_outdir_that_is_a_file(tiny, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(MiningError, match="not a directory"):
        mine(PROBLEMS[:1], tiny, settings(), target, progress=False)


def test_real_sampler_on_tiny_model_records_spans_and_invariants(tiny, tmp_path):
    result = mine(PROBLEMS[:2], tiny, settings(max_tries=2, max_new_tokens=16), tmp_path, progress=False)
    runs = runs_of(tmp_path)
    assert len(runs) == 4 and result.summary["pairs_found"] == 0
    for record in runs:
        assert record.text == tiny.tokenizer.decode(record.token_ids, skip_special_tokens=True,
                                                     clean_up_tokenization_spaces=False)
        assert record.prompt_token_ids[-4:] == tiny.tokenizer("<|im_start|>assistant\n")["input_ids"]
        assert len(record.token_logprobs) == len(record.token_ids)


def test_incremental_pairs_and_summary_equal_a_rebuild_from_all_runs(tiny, tmp_path):
    import random

    rng = random.Random(7)
    problems = [Problem(f"r{i:02d}", f"What is 2 + 3? ({i})", "5") for i in range(30)]
    scripts = {p.id: [rng.choice([CORRECT, WRONG, UNPARSED]) for _ in range(8)] for p in problems}
    half = mine(problems[:15], tiny, settings(), tmp_path, min_pairs=100, progress=False,
                sampler=ScriptedSampler(tiny.tokenizer, scripts))
    result = mine(problems, tiny, settings(), tmp_path, min_pairs=100, progress=False,
                  sampler=ScriptedSampler(tiny.tokenizer, scripts))
    runs = read_runs(tmp_path / artifacts.RUNS_FILE)
    rebuilt = build_pairs(runs, {p.id: p.question for p in problems})
    assert 0 < len(half.pairs) < len(rebuilt)
    assert [p.to_line() for p in result.pairs] == [p.to_line() for p in rebuilt]
    assert (tmp_path / artifacts.PAIRS_FILE).read_text() == "".join(p.to_line() for p in rebuilt)
    assert (tmp_path / artifacts.PAIRS_CSV).read_text() == pairs_csv(rebuilt)
    assert json.loads((tmp_path / artifacts.SUMMARY_FILE).read_text()) == build_summary(runs, rebuilt)


class FailingOnce(ScriptedSampler):
    """The scripted decoder, except that one (problem, attempt) raises what a numeric failure raises."""

    def __init__(self, tokenizer, scripts, fail_seed, error):
        super().__init__(tokenizer, scripts)
        self.fail_seed, self.error = fail_seed, error

    def __call__(self, model, prompt_ids, config, seed):
        if seed == self.fail_seed:
            raise self.error
        return super().__call__(model, prompt_ids, config, seed)


def test_a_deterministic_failure_is_recorded_and_mining_moves_on(tiny, tmp_path):
    from cot_patching.mining.validate import validate_outdir

    error = RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
    sampler = FailingOnce(tiny.tokenizer, {"p0": [CORRECT, WRONG, WRONG]}, attempt_seed("p0", 1), error)
    result = mine(PROBLEMS[:1], tiny, settings(), tmp_path, progress=False, sampler=sampler)
    runs = runs_of(tmp_path)
    assert [(r.attempt, r.finish_reason) for r in runs] == [(0, "stop"), (1, "error"), (2, "stop")]
    assert runs[1].error.startswith("RuntimeError: probability tensor") and not runs[1].token_ids
    assert [(p.correct_ref["attempt"], p.incorrect_ref["attempt"]) for p in result.pairs] == [(0, 2)]
    assert validate_outdir(tmp_path, tiny.tokenizer) == []
    again = mine(PROBLEMS[:1], tiny, settings(), tmp_path, progress=False, sampler=sampler)
    assert again.attempts_this_call == 0  # the resumed run does not die on the failed attempt again


def test_a_device_failure_stops_the_run_and_records_nothing(tiny, tmp_path):
    sampler = FailingOnce(tiny.tokenizer, {"p0": [CORRECT, WRONG]}, attempt_seed("p0", 1),
                          RuntimeError("CUDA error: an illegal memory access was encountered"))
    with pytest.raises(RuntimeError, match="CUDA error"):
        mine(PROBLEMS[:1], tiny, settings(), tmp_path, progress=False, sampler=sampler)
    assert [r.attempt for r in runs_of(tmp_path)] == [0]


def test_replaying_a_failed_attempt_fails_the_same_way(tiny):
    from cot_patching.decoding.replay import replay_attempt
    from cot_patching.mining.miner import failed_attempt
    from cot_patching.traces.prompt import EncodedPrompt

    prompt = EncodedPrompt(text="x", token_ids=[len(tiny.tokenizer) + 5], chat_template_applied=False)
    try:
        from cot_patching.decoding.sampling import DecodeConfig, sample

        sample(tiny, prompt.token_ids, DecodeConfig(0.0, 0.95, 4), 1)
    except Exception as err:  # an id outside the embedding: the failure replay must meet again
        record = failed_attempt(PROBLEMS[0], prompt, 0, 0.0, settings(), err, None)
    assert replay_attempt(tiny, record).match
    other = failed_attempt(PROBLEMS[0], prompt, 0, 0.0, settings(), ZeroDivisionError("x"), None)
    assert not replay_attempt(tiny, other).match  # negative control: a different failure is a mismatch


def test_a_resume_on_another_model_revision_is_refused(tiny, tmp_path, monkeypatch):
    """The revision the run was mined from is part of its identity: a resume with another file is refused."""
    monkeypatch.setattr(tiny.info, "revision", "sha256:" + "a" * 64)
    sampler = ScriptedSampler(tiny.tokenizer, {"p0": [CORRECT, CORRECT, WRONG], "p1": [CORRECT, WRONG]})
    mine(PROBLEMS[:1], tiny, settings(max_tries=2), tmp_path, manifest={"model": tiny.info.to_json()},
         progress=False, sampler=sampler)
    manifest = json.loads((tmp_path / artifacts.MANIFEST_FILE).read_text())
    assert manifest["version"] == 2 and manifest["model"]["revision"] == tiny.info.revision
    mine(PROBLEMS[:2], tiny, settings(max_tries=2), tmp_path, progress=False, sampler=sampler)  # same revision
    manifest["model"]["revision"] = "sha256:" + "0" * 64
    (tmp_path / artifacts.MANIFEST_FILE).write_text(json.dumps(manifest))
    before = (tmp_path / artifacts.RUNS_FILE).read_bytes()
    with pytest.raises(MiningError, match="was mined from model revision sha256:0000"):
        mine(PROBLEMS, tiny, settings(max_tries=2), tmp_path, progress=False, sampler=sampler)
    assert (tmp_path / artifacts.RUNS_FILE).read_bytes() == before


def test_attempts_carry_the_model_an_oom_fallback_loaded(tiny, tmp_path, monkeypatch):
    """After a fallback the records name the model that decoded them, and validate accepts that name."""
    from cot_patching.mining.validate import validate_outdir

    monkeypatch.setattr(tiny.info, "fallback_from", [{"model": "tiny", "reason": "CUDA OOM: test"}])
    sampler = ScriptedSampler(tiny.tokenizer, {"p0": [CORRECT, WRONG]})
    mine(PROBLEMS[:1], tiny, settings(), tmp_path, manifest={"model": tiny.info.to_json()}, progress=False,
         sampler=sampler)
    assert {r.model for r in runs_of(tmp_path)} == {tiny.info.name} != {"tiny"}
    assert not [v for v in validate_outdir(tmp_path, tiny.tokenizer) if "model" in v.message]
    monkeypatch.setattr(tiny.info, "fallback_from", [])  # negative control: without a fallback the names differ
    manifest = json.loads((tmp_path / artifacts.MANIFEST_FILE).read_text())
    manifest["model"]["fallback_from"] = []
    (tmp_path / artifacts.MANIFEST_FILE).write_text(json.dumps(manifest))
    assert [v for v in validate_outdir(tmp_path, tiny.tokenizer) if "model" in v.message]
