"""`localize`: seeded rollouts from exact prefixes, shared-prefix batches, resume, replay, outputs, CLI refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner
from helpers import MULTI_STEP_CORRECT, MULTI_STEP_WRONG, ScriptedSampler

from cot_patching.cli import app
from cot_patching.decoding.batched import BatchRow, sample_batch
from cot_patching.decoding.sampling import DecodeConfig
from cot_patching.localization.outputs import summarize
from cot_patching.runs.artifacts import LOCALIZATION_FORKS_CSV, LOCALIZATION_STEPS_CSV
from cot_patching.localization.rollouts import (
    LocalizeReport,
    fork_plan,
    fork_prefixes,
    label_of,
    localize_run,
    read_rollouts,
    rollout_seed,
    rollouts_file,
    run_phase,
    slots_of,
    step_prefixes,
    verify_rollouts,
)
from cot_patching.localization.settings import LocalizeError, LocalizeSettings
from cot_patching.localization.stats import wilson_interval
from cot_patching.mining.miner import mine
from cot_patching.mining.settings import MineSettings
from cot_patching.models.backends import BRIDGE, resolve_backend
from cot_patching.problems import Problem
from cot_patching.runs.directory import load_pairs

# Rollouts run on the batched decoder, which decodes the bridge's Hugging Face model (as `mine --batch-size` does).
pytestmark = pytest.mark.skipif(resolve_backend(None) != BRIDGE, reason="batched decoding runs on the bridge only")

MAX_NEW = 64
SETTINGS = LocalizeSettings(rollouts=3, batch_size=8, fork_rollouts=0, max_new_tokens=MAX_NEW)


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("loc-run")
    problems = [Problem(f"q{i}", f"Tom has 3 apples and buys 4 more ({i}). How many?", "7") for i in range(2)]
    scripts = {p.id: [MULTI_STEP_WRONG, MULTI_STEP_CORRECT] for p in problems}
    settings = MineSettings(model=tiny.info.name, problems_sha256="x", max_new_tokens=MAX_NEW)
    mine(problems, tiny, settings, outdir, manifest={"model": tiny.info.to_json()}, progress=False,
         sampler=ScriptedSampler(tiny.tokenizer, scripts))
    return outdir


@pytest.fixture(scope="module")
def localized(tiny, run, tmp_path_factory):
    out = tmp_path_factory.mktemp("loc") / "localization"
    report = localize_run(tiny, run, out, SETTINGS, load_pairs(run), tiny.info.to_json())
    return out, report


def test_a_forked_prefill_gives_the_logits_and_tokens_of_a_full_prefill(tiny):
    prompts = [[5, 6, 7, 8, 9], [5, 6, 7, 8, 9], [11, 12, 13], None]
    full = tiny.batched_decoder(4, 256)
    forked = tiny.batched_decoder(4, 256)
    single = tiny.batched_decoder(1, 256)
    with torch.inference_mode():  # as `sample_batch` runs them (a cached decoder's cache is an inference tensor)
        a = full.prefill(prompts, 5)
        b = forked.prefill_forked(prompts, 5, single)
    assert torch.allclose(a[:3], b[:3], atol=1e-5, rtol=1e-5)
    assert torch.equal(b[0], b[1])  # one prefill, copied
    rows = [None if p is None else BatchRow(p, DecodeConfig(0.0, 1.0, 12), 1) for p in prompts]
    plain = sample_batch(full, rows, tiny.stop_token_ids, width=5)
    shared = sample_batch(forked, rows, tiny.stop_token_ids, width=5, fork_from=single)
    assert [g.token_ids for g in plain[:3]] == [g.token_ids for g in shared[:3]]


def test_every_prefix_gets_its_rollouts_with_derived_seeds_and_the_runs_labels(tiny, run, localized):
    out, report = localized
    pairs = load_pairs(run)
    records = read_rollouts(out)
    prefixes = [p for pair in pairs for p in step_prefixes(pair, MAX_NEW)]
    assert len(prefixes) == 2 * (1 + 3 + 3)  # the prompt and three step boundaries of each trace
    assert len(records) == report.rollouts_done == len(prefixes) * SETTINGS.rollouts
    by_id = {p.id: p for p in pairs}
    for record in records:
        assert record["seed"] == rollout_seed(record["pair_id"], record["tag"], record["prefix_len"], record["r"])
        pair = by_id[record["pair_id"]]
        kept = [] if record["trace"] == "prompt" else list(pair.trace(record["trace"]).token_ids[:record["prefix_len"]])
        assert len(kept) + len(record["token_ids"]) <= MAX_NEW
        cut = record["finish_reason"] == "length"
        assert record["label"] == label_of(tiny.tokenizer, kept + record["token_ids"], "7", False, cut)[0]
    assert len({r["seed"] for r in records}) == len(records)
    # the prefix through step k ends where the run's span of step k ends
    step2 = next(p for p in prefixes if p.trace == "correct" and p.step == 2)
    assert step2.prefix_len == pairs[0].correct.step_spans[1]["tok_end"]


def test_a_killed_localization_resumes_into_identical_bytes(tiny, run, localized, tmp_path):
    out, _ = localized
    reference = rollouts_file(out, None).read_bytes()
    copy = tmp_path / "localization"
    shutil.copytree(out, copy)
    path = rollouts_file(copy, None)
    lines = reference.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:10]) + lines[10][:25])  # a kill mid-group and mid-line
    report = localize_run(tiny, run, copy, SETTINGS, load_pairs(run), tiny.info.to_json())
    assert path.read_bytes() == reference
    assert report.rollouts_skipped == 10 and report.rollouts_done == len(lines) - 10  # 2 of group 1 checked, kept


def test_verify_replays_rollouts_and_catches_a_changed_one(tiny, run, localized, tmp_path):
    out, _ = localized
    pairs = {p.id: p for p in load_pairs(run)}
    records = read_rollouts(out)
    compared, identical, differences = verify_rollouts(tiny, pairs, records)
    assert compared == identical == len(records) and not differences
    tampered = [dict(r) for r in records]
    tampered[4]["token_ids"] = tampered[4]["token_ids"][:-1] + [tampered[4]["token_ids"][-1] + 1]
    compared, identical, differences = verify_rollouts(tiny, pairs, tampered)
    assert identical == compared - 1 and len(differences) == 1


def test_another_setting_or_foreign_rollouts_are_refused(tiny, run, localized, tmp_path):
    out, _ = localized
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    for other in (LocalizeSettings(rollouts=3, temperature=0.9, batch_size=8, fork_rollouts=0, max_new_tokens=MAX_NEW),
                  LocalizeSettings(rollouts=2, batch_size=8, fork_rollouts=0, max_new_tokens=MAX_NEW)):
        with pytest.raises(LocalizeError, match="different settings"):
            localize_run(tiny, run, out, other, load_pairs(run), tiny.info.to_json())
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "rollouts.jsonl").write_text("{}\n")
    with pytest.raises(LocalizeError, match="not a localization of ours"):
        localize_run(tiny, run, foreign, SETTINGS, load_pairs(run), tiny.info.to_json())
    assert (foreign / "rollouts.jsonl").read_text() == "{}\n"


def test_more_rollouts_extend_a_localization_and_keep_its_records(tiny, run, localized, tmp_path):
    out = tmp_path / "localization"
    shutil.copytree(localized[0], out)
    before = (out / "rollouts.jsonl").read_bytes()
    more = LocalizeSettings(rollouts=5, batch_size=8, fork_rollouts=0, max_new_tokens=MAX_NEW)
    report = localize_run(tiny, run, out, more, load_pairs(run), tiny.info.to_json())
    after = (out / "rollouts.jsonl").read_bytes()
    assert after.startswith(before) and len(after) > len(before)  # appended, nothing rewritten
    added = [json.loads(line) for line in after[len(before):].decode().splitlines()]
    assert sorted({r["r"] for r in added}) == [3, 4] and len(added) == report.rollouts_done == 14 * 2
    fresh = tmp_path / "fresh"
    localize_run(tiny, run, fresh, LocalizeSettings(rollouts=5, rounds=(3, 5), batch_size=8, fork_rollouts=0,
                                                    max_new_tokens=MAX_NEW), load_pairs(run), tiny.info.to_json())
    assert (fresh / "rollouts.jsonl").read_bytes() == after  # extending = localizing in those rounds at once
    recorded = json.loads((out / "settings.json").read_text())["settings"]
    assert recorded["rollouts"] == 5 and recorded["rounds"] == [3, 5]


def test_adaptive_stopping_ends_a_prefix_once_its_interval_is_narrow(tiny, run, tmp_path):
    out = tmp_path / "adaptive"
    settings = LocalizeSettings(rollouts=6, rounds=(2, 4, 6), stop_width=0.35, batch_size=8, fork_rollouts=0,
                                max_new_tokens=MAX_NEW)
    localize_run(tiny, run, out, settings, load_pairs(run), tiny.info.to_json())
    records = read_rollouts(out)
    by_prefix: dict[tuple, list[dict]] = {}
    for record in records:
        by_prefix.setdefault((record["pair_id"], record["tag"], record["prefix_len"]), []).append(record)
    assert len(by_prefix) == 14
    stopped = 0
    for rollouts in by_prefix.values():
        n = len(rollouts)
        assert sorted(r["r"] for r in rollouts) == list(range(n)) and n in (2, 4, 6)
        for bound in (2, 4):  # open after a round exactly when its interval is wider than 2 * stop_width
            if n >= bound:
                correct = sum(r["label"] == "correct" for r in rollouts if r["r"] < bound)
                low, high = wilson_interval(correct, bound)
                assert ((high - low) / 2 > 0.35) == (n > bound)
        stopped += n < 6
    assert stopped > 0  # the rule did stop some prefix (at n = 2, 0 or 2 of 2 correct: half-width 0.33)
    summary = summarize(load_pairs(run), out, MAX_NEW, tiny.tokenizer)
    assert summary["rollouts"] == len(records)
    with pytest.raises(LocalizeError, match="stop_width"):
        localize_run(tiny, run, out, LocalizeSettings(rollouts=6, rounds=(2, 4, 6), stop_width=0.2, batch_size=8,
                                                      fork_rollouts=0, max_new_tokens=MAX_NEW),
                     load_pairs(run), tiny.info.to_json())


def test_tables_summary_and_plots_come_from_the_records(tiny, run, localized):
    out, _ = localized
    summary = summarize(load_pairs(run), out, MAX_NEW, tiny.tokenizer)
    rows = (out / LOCALIZATION_STEPS_CSV).read_text().splitlines()
    assert rows[0].startswith("pair_id,trace,step,prefix_len,n,correct")
    assert len(rows) == 1 + 2 * 2 * 4  # 2 pairs x 2 traces x (k = 0..3)
    assert summary["rollouts"] == len(read_rollouts(out))
    assert (out / "p_k.png").is_file() and (out / "p_k.svg").is_file()
    assert json.loads((out / "summary.json").read_text())["pairs"] == 2


def test_forking_tokens_are_tried_at_indices_with_alternatives(tiny, run, tmp_path):
    pairs = load_pairs(run)
    record = pairs[0].incorrect
    span = record.step_spans[1]
    ids = torch.tensor([list(record.prompt_token_ids) + list(record.token_ids)])
    probs = torch.softmax(tiny.logits(ids)[0].float(), dim=-1)
    index = span["tok_start"] + 1
    second = torch.topk(probs[len(record.prompt_token_ids) + index - 1], 2).values[1].item()
    plan = fork_plan(tiny, pairs[:1], {pairs[0].id: 2}, threshold=second * 0.999)
    assert any(entry["index"] == index for entry in plan)
    for entry in plan:
        assert entry["step"] == 2 and span["tok_start"] <= entry["index"] < span["tok_end"]
        assert sum(alt["actual"] for alt in entry["alternatives"]) == 1 and len(entry["alternatives"]) >= 2
    out = tmp_path / "localization"
    out.mkdir()
    settings = LocalizeSettings(rollouts=1, batch_size=8, fork_rollouts=2, max_new_tokens=MAX_NEW)
    slots = slots_of(fork_prefixes(plan[:2]), settings.fork_rollouts)
    run_phase(tiny, {pairs[0].id: pairs[0]}, settings, slots, rollouts_file(out, None), 0, LocalizeReport(out))
    records = read_rollouts(out)
    assert len(records) == len(slots)
    fork = next(r for r in records if r["fork_token"] != record.token_ids[r["fork_index"]])
    assert fork["prefix_len"] == fork["fork_index"] + 1 and fork["tag"] == f"incorrect+{fork['fork_token']}"
    summarize(pairs, out, MAX_NEW, tiny.tokenizer, plots=False)
    forks = (out / LOCALIZATION_FORKS_CSV).read_text().splitlines()
    assert len(forks) == 1 + sum(len(entry["alternatives"]) for entry in plan[:2])


def test_cli_refuses_bad_flags_with_one_line(run, tmp_path):
    for flags, message in ((["--rollouts", "0"], "--rollouts must be an integer >= 1"),
                           (["--temperature", "0"], "--temperature must be > 0"),
                           (["--pairs", "nope"], "no pair nope"),
                           (["--shard", "3/2"], "shard")):
        result = CliRunner().invoke(app, ["localize", "--results", str(run), "--out", str(tmp_path / "l"), *flags])
        assert result.exit_code != 0
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
        assert not (tmp_path / "l").exists()
