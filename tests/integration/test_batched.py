"""Batched decoding (`mine --batch-size N`): slot independence, exact replay in the slot, the stop rule by group,
resume of a group a kill cut short (tiny random Llama with SmolLM2's tokenizer, CPU, fp32)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import CORRECT, UNPARSED, WRONG

from cot_patching.decoding.batched import (
    BatchedDecoder,
    BatchLayout,
    BatchRow,
    RowSampling,
    cache_len_for,
    choose_next_tokens,
    sample_batch,
)
from cot_patching.decoding.replay import replay_attempt
from cot_patching.decoding.sampling import DecodeConfig, Generation, attempt_seed, sample
from cot_patching.mining import miner
from cot_patching.mining.miner import MiningError, mine
from cot_patching.mining.settings import MineSettings
from cot_patching.mining.validate import validate_outdir
from cot_patching.models.backends import BRIDGE, resolve_backend
from cot_patching.problems import Problem
from cot_patching.runs import artifacts
from cot_patching.runs.environment import environment_facts
from cot_patching.runs.records import RunRecord, read_runs

pytestmark = pytest.mark.skipif(resolve_backend(None) != BRIDGE,
                                reason="batched decoding runs the bridge's Hugging Face model (TransformerLens 4)")

PROMPTS = [list(range(100, 100 + n)) for n in (20, 33, 27)]
WIDTH = 33
SAMPLED = DecodeConfig(temperature=1.0, top_p=0.95, max_new_tokens=24)


def decoder(model, size=4, max_new=24):
    return BatchedDecoder(model.model.original_model, size, cache_len_for(WIDTH, max_new))


def test_a_slot_decodes_the_same_bits_whatever_the_other_slots_hold(tiny):
    dec = decoder(tiny)
    rows = [BatchRow(p, SAMPLED, 1000 + i) for i, p in enumerate(PROMPTS)] + [None]
    together = sample_batch(dec, rows, frozenset())
    alone = sample_batch(dec, [None, rows[1], None, None], frozenset(), width=WIDTH)
    others = [BatchRow(list(range(500, 530)), SAMPLED, 7), rows[1],
              BatchRow(list(range(50, 83)), replace(SAMPLED, temperature=0.0), 9), BatchRow([5] * 10, SAMPLED, 3)]
    with_others = sample_batch(dec, others, frozenset(), width=WIDTH)
    for run in (alone, with_others):
        assert run[1].token_ids == together[1].token_ids
        assert run[1].token_logprobs == together[1].token_logprobs  # bitwise, not approximately
    # Negative control: the same comparison tells a row with another seed apart.
    reseeded = sample_batch(dec, [None, replace(rows[1], seed=1002), None, None], frozenset(), width=WIDTH)
    assert reseeded[1].token_ids != together[1].token_ids


def test_a_greedy_slot_follows_the_batch_1_decoder(tiny):
    rows = [BatchRow(PROMPTS[0], replace(SAMPLED, temperature=0.0, max_new_tokens=12), 1), None, None, None]
    batched = sample_batch(decoder(tiny), rows, frozenset(), width=WIDTH)[0]
    alone = sample(tiny, PROMPTS[0], replace(SAMPLED, temperature=0.0, max_new_tokens=12), 1)
    assert batched.token_ids == alone.token_ids
    assert batched.token_logprobs == pytest.approx(alone.token_logprobs, abs=1e-5)


def test_each_slot_stops_at_its_own_end_of_turn(tiny):
    rows = [BatchRow(p, SAMPLED, 50 + i) for i, p in enumerate(PROMPTS)] + [None]
    free = sample_batch(decoder(tiny), rows, frozenset())
    stop = free[0].token_ids[5]  # slot 0 stops at its 6th token; the others at their first use of that id
    stopped = sample_batch(decoder(tiny), rows, frozenset({stop}))
    for got, full in zip(stopped[:3], free[:3]):
        end = full.token_ids.index(stop) + 1 if stop in full.token_ids else len(full.token_ids)
        assert got.token_ids == full.token_ids[:end]
        assert got.finish_reason == ("stop" if stop in full.token_ids else "length")
        assert len(got.token_logprobs) == len(got.token_ids)
    assert stopped[3] is None and len(stopped[0].token_ids) == 6


def test_rows_sample_from_their_own_nucleus():
    logits = torch.tensor([[5.0, 4.9, -10.0, -10.0], [0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 2.0, 0.0]])

    def draw(seed: int) -> list[int]:
        generators = [torch.Generator().manual_seed(s) for s in (1, seed, 3)]
        return choose_next_tokens(logits, RowSampling([1.0, 1.0, 0.0], [0.5, 1.0, 0.9], generators,
                                                      logits.device)).tolist()

    assert all(tokens[0] == 0 and tokens[2] == 1 for tokens in map(draw, range(40)))  # top-p 0.5: the top token
    assert {draw(seed)[1] for seed in range(40)} == {0, 1, 2, 3}  # a flat row with top-p 1 reaches every token


def test_a_row_draws_what_the_batch_1_sampler_draws(tiny):
    from cot_patching.decoding.sampling import choose_next_token

    logits = torch.randn(6, len(tiny.tokenizer), generator=torch.Generator().manual_seed(0)) * 3
    temperatures, top_p = [1.0, 0.7, 0.0, 0.5, 1.0, 0.9], [0.95, 0.9, 0.95, 0.5, 1.0, 0.95]
    for step in range(5):
        batched = choose_next_tokens(logits, RowSampling(
            temperatures, top_p, [torch.Generator().manual_seed(100 * step + r) for r in range(6)], logits.device))
        alone = [int(choose_next_token(logits[r], temperatures[r], top_p[r],
                                       torch.Generator().manual_seed(100 * step + r))) for r in range(6)]
        assert batched.tolist() == alone


def test_layout_is_validated():
    good = BatchLayout(size=4, slot=3, width=10, cache_len=256, path="eager", group=0, rows=2)
    assert BatchLayout.from_json(good.to_json()) == good
    for bad in ({"slot": 4}, {"rows": 5}, {"path": "warp"}, {"size": True}, {"sampler": "rows-v0"}, {"group": -1}):
        with pytest.raises(ValueError):
            replace(good, **bad)
    with pytest.raises(ValueError, match="not a batch layout"):
        BatchLayout.from_json({"size": 4})


PROBLEMS = [Problem(f"b{i}", f"What is 2 + 3? ({i})", "5", "test") for i in range(5)]


def settings(**overrides):
    return MineSettings(**{"model": "tiny", "problems_sha256": "x", "max_new_tokens": 16, **overrides})


def test_batched_mining_records_layouts_validates_and_replays_exactly(tiny, tmp_path):
    result = mine(PROBLEMS, tiny, settings(batch_size=3, max_tries=3), tmp_path, min_pairs=5, progress=False,
                  manifest={"model": tiny.info.to_json()})
    runs = [line.record for line in read_runs(tmp_path / artifacts.RUNS_FILE)]
    assert result.attempts_this_call == len(runs) == 15  # a random model finds no pair: every try is used
    layouts = [BatchLayout.from_json(r.batch) for r in runs]
    assert [(r.id, r.attempt) for r in runs[:3]] == [("b0", 0), ("b1", 0), ("b2", 0)]  # the first group
    assert [(lay.group, lay.slot, lay.rows) for lay in layouts[:4]] == [(0, 0, 3), (0, 1, 3), (0, 2, 3), (1, 0, 3)]
    assert all(lay.path == "grouped_eager" and lay.size == 3 for lay in layouts)
    assert validate_outdir(tmp_path) == []
    replays = [replay_attempt(tiny, r) for r in runs]
    assert all(result.match for result in replays)
    # Negative control: a record whose 4th token was changed does not replay, and says where.
    perturbed = replace(runs[4], token_ids=runs[4].token_ids[:3] + [runs[4].token_ids[3] + 1] + runs[4].token_ids[4:])
    assert replay_attempt(tiny, perturbed).first_mismatch == 3


def scripted_batches(monkeypatch, tokenizer, scripts):
    """Make `mine` decode groups from scripts (problem -> texts by attempt), recording each group's members."""
    groups: list[list[tuple[int, float]]] = []

    def fake(decoder, rows, stop_token_ids, width=None, stop_check_interval=None):
        groups.append([(row.seed, row.config.temperature) for row in rows if row is not None])
        by_seed = {attempt_seed(pid, k): text for pid, texts in scripts.items() for k, text in enumerate(texts)}
        out = []
        for row in rows:
            if row is None:
                out.append(None)
                continue
            ids = tokenizer(by_seed[row.seed], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            out.append(Generation(ids, "stop", [0.0] * len(ids)))
        return out

    monkeypatch.setattr(miner, "sample_batch", fake)
    return groups


def test_the_stop_rule_holds_per_problem_and_groups_take_the_first_due_problems(tiny, tmp_path, monkeypatch):
    scripts = {"b0": [CORRECT, WRONG], "b1": [WRONG, UNPARSED, WRONG, CORRECT], "b2": [CORRECT] * 8,
               "b3": [WRONG, CORRECT], "b4": [UNPARSED, CORRECT, WRONG]}
    groups = scripted_batches(monkeypatch, tiny.tokenizer, scripts)
    result = mine(PROBLEMS, tiny, settings(batch_size=2, max_new_tokens=256), tmp_path, min_pairs=10,
                  progress=False)
    runs = [line.record for line in read_runs(tmp_path / artifacts.RUNS_FILE)]
    by_problem = {p.id: [r.attempt for r in runs if r.id == p.id] for p in PROBLEMS}
    assert by_problem == {"b0": [0, 1], "b1": [0, 1, 2, 3], "b2": list(range(8)), "b3": [0, 1], "b4": [0, 1, 2]}
    seeds = {attempt_seed(p, k): (p, k) for p in scripts for k in range(8)}
    members = [[seeds[seed] for seed, _ in group] for group in groups]
    assert members[:3] == [[("b0", 0), ("b1", 0)], [("b0", 1), ("b1", 1)], [("b1", 2), ("b2", 0)]]
    assert {p.id for p in result.pairs} == {"b0", "b1", "b3", "b4"}
    assert validate_outdir(tmp_path) == []


def test_min_pairs_is_checked_between_groups(tiny, tmp_path, monkeypatch):
    scripts = {p.id: [WRONG, CORRECT] for p in PROBLEMS}
    scripted_batches(monkeypatch, tiny.tokenizer, scripts)
    result = mine(PROBLEMS, tiny, settings(batch_size=2), tmp_path, min_pairs=1, progress=False)
    assert [p.id for p in result.pairs] == ["b0", "b1"]  # the group that made the first pair also made the second


def test_a_group_cut_short_by_a_kill_is_finished_identically(tiny, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    mine(PROBLEMS, tiny, settings(batch_size=3, max_tries=2), whole, min_pairs=5, progress=False)
    lines = (whole / artifacts.RUNS_FILE).read_bytes().splitlines(keepends=True)
    cut.mkdir()
    for name in (artifacts.MANIFEST_FILE,):
        (cut / name).write_bytes((whole / name).read_bytes())
    # A kill after the 2nd of the 2nd group's 3 lines, in the middle of writing the 3rd (a torn tail).
    (cut / artifacts.RUNS_FILE).write_bytes(b"".join(lines[:5]) + lines[5][:40])
    assert len(miner.unfinished_group(read_runs(cut / artifacts.RUNS_FILE))) == 2
    result = mine(PROBLEMS, tiny, settings(batch_size=3, max_tries=2), cut, min_pairs=5, progress=False)
    assert result.resumed_from == 5 and result.attempts_this_call == len(lines) - 5
    for name in (artifacts.RUNS_FILE, artifacts.PAIRS_FILE, artifacts.PAIRS_CSV):
        assert (cut / name).read_bytes() == (whole / name).read_bytes()
    assert json.loads((cut / artifacts.SUMMARY_FILE).read_text()) == json.loads(
        (whole / artifacts.SUMMARY_FILE).read_text())


def test_a_written_line_that_does_not_decode_again_stops_the_resume(tiny, tmp_path):
    mine(PROBLEMS, tiny, settings(batch_size=3, max_tries=2), tmp_path, min_pairs=5, progress=False)
    path = tmp_path / artifacts.RUNS_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[4])
    record["token_ids"][0] += 1  # a line the machine cannot have produced
    path.write_bytes(b"".join(lines[:4]) + (json.dumps(record) + "\n").encode())
    before = path.read_bytes()
    with pytest.raises(MiningError, match="differs from its record"):
        mine(PROBLEMS, tiny, settings(batch_size=3, max_tries=2), tmp_path, min_pairs=5, progress=False)
    assert path.read_bytes() == before  # nothing written, nothing lost


def test_resuming_with_another_batch_size_is_refused(tiny, tmp_path):
    mine(PROBLEMS[:1], tiny, settings(batch_size=2, max_tries=1), tmp_path, min_pairs=5, progress=False,
         manifest={})
    with pytest.raises(MiningError, match="batch_size is 2 there, 1 now"):
        mine(PROBLEMS[:1], tiny, settings(max_tries=1), tmp_path, min_pairs=5, progress=False)


def test_runs_mined_before_batching_keep_resuming(tiny, tmp_path):
    mine(PROBLEMS[:1], tiny, settings(max_tries=1), tmp_path, min_pairs=5, progress=False)
    manifest = json.loads((tmp_path / artifacts.MANIFEST_FILE).read_text())
    del manifest["settings"]["batch_size"]  # a manifest written before the setting existed
    (tmp_path / artifacts.MANIFEST_FILE).write_text(json.dumps(manifest))
    assert "batch" not in json.loads((tmp_path / artifacts.RUNS_FILE).read_text().splitlines()[0])
    mine(PROBLEMS[:2], tiny, settings(max_tries=1), tmp_path, min_pairs=5, progress=False)


def test_batch_size_is_validated():
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="batch_size"):
            settings(batch_size=bad)


def test_records_without_a_layout_keep_their_old_bytes(tiny, tmp_path):
    record = RunRecord(id="a", attempt=0, temperature=0.0, top_p=0.95, seed=1, model="m", prompt="p",
                                 text="", final_answer=None, correct=False, parse_ok=False, token_ids=[],
                                 step_spans=[], final_answer_span=None, prompt_token_ids=[1], max_new_tokens=1,
                                 finish_reason="length")
    assert b'"batch"' not in record.to_line()
    assert b'"batch": {"size": 2' in replace(record, batch={"size": 2}).to_line()


def test_paths_of_the_decoders(tiny):
    assert tiny.batched_decoder(2, 256).path == "grouped_eager"
    assert tiny.batched_decoder(2, 256) is tiny.batched_decoder(2, 256, "grouped_eager")
    assert tiny.batched_decoder(2, 256, "eager").path == "eager"
    from cot_patching.models.backends import BackendError

    with pytest.raises(BackendError, match="needs a CUDA device"):
        tiny.batched_decoder(2, 256, "cuda_graph")
    assert isinstance(Path(__file__), Path)


def test_validate_checks_batch_layouts(tiny, tmp_path):
    mine(PROBLEMS[:3], tiny, settings(batch_size=3, max_tries=1), tmp_path, min_pairs=5, progress=False)
    path = tmp_path / artifacts.RUNS_FILE
    good = path.read_bytes()
    lines = [json.loads(line) for line in good.splitlines()]
    lines[1]["batch"]["slot"] = 0  # two attempts in one slot
    lines[2]["batch"]["width"] = 3  # a prompt wider than its group
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    messages = [v.message for v in validate_outdir(tmp_path)]
    assert any("slots [0, 0, 2] are not distinct" in m for m in messages)
    assert any("do not fit width 3" in m for m in messages)
    assert any("disagree on its size, width" in m for m in messages)
    path.write_bytes(good)
    assert validate_outdir(tmp_path) == []


def test_the_cli_mines_in_batches_and_reproduce_replays_them(tmp_path, tiny_dir):
    from typer.testing import CliRunner

    from cot_patching.cli import app

    problems = tmp_path / "problems.json"
    problems.write_text(json.dumps([{"id": p.id, "question": p.question, "gold_answer": p.gold_answer}
                                    for p in PROBLEMS[:3]]))
    out = tmp_path / "run"
    runner = CliRunner()
    mined = runner.invoke(app, ["mine", "--problems", str(problems), "--model", str(tiny_dir), "--outdir", str(out),
                                "--max-tries", "2", "--max-new-tokens", "12", "--batch-size", "2", "--no-progress",
                                "--device", "cpu"])
    assert mined.exit_code == 0, mined.output
    assert json.loads((out / artifacts.MANIFEST_FILE).read_text())["settings"]["batch_size"] == 2
    replayed = runner.invoke(app, ["reproduce", "--outdir", str(out), "--all-runs"])
    assert replayed.exit_code == 0, replayed.output
    assert "6/6 attempts reproduced exactly" in replayed.output
    refused = runner.invoke(app, ["mine", "--problems", str(problems), "--model", str(tiny_dir), "--outdir",
                                  str(tmp_path / "bad"), "--batch-size", "0", "--no-progress"])
    assert refused.exit_code != 0 and "--batch-size must be >= 1, got 0" in refused.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("path", ["eager", "cuda_graph", "cuda_graph_compiled", "plain_cuda_graph",
                                  "plain_cuda_graph_compiled", "grouped_cuda_graph", "grouped_cuda_graph_compiled"])
def test_on_the_gpu_a_slot_is_independent_of_the_others_and_of_capture(path):
    from test_cuda_graphs import tiny_qwen2, wrapped

    model = wrapped(tiny_qwen2(), compile_step=True)
    dec = model.batched_decoder(8, cache_len_for(40, 64), path)
    prompts = [list(range(100 + 7 * i, 120 + 9 * i)) for i in range(8)]
    rows = [BatchRow(p, replace(SAMPLED, max_new_tokens=64), 300 + i) for i, p in enumerate(prompts)]
    first = sample_batch(dec, rows, frozenset(), width=40)  # the first group captures the graph
    again = sample_batch(dec, rows, frozenset(), width=40)
    alone = sample_batch(dec, [None] * 5 + [rows[5]] + [None] * 2, frozenset(), width=40)
    shuffled = sample_batch(dec, rows[::-1][:5] + [rows[5]] + rows[:2], frozenset(), width=40)
    for run in (again, alone, shuffled):
        assert run[5].token_ids == first[5].token_ids
        assert run[5].token_logprobs == first[5].token_logprobs
    assert again[0].token_logprobs == first[0].token_logprobs
    assert dec.path == path


def test_the_largest_batch_that_fits_follows_the_kv_cache(tiny):
    from cot_patching.decoding.batched import largest_batch_size, slot_bytes

    hf = tiny.model.original_model
    per_slot = slot_bytes(hf, 512, 100)
    kv = 2 * 2 * 2 * 16 * 512 * 4  # K and V, 2 layers, 2 KV heads of 16 dims, 512 positions, fp32
    assert per_slot > kv and slot_bytes(hf, 1024, 100) - per_slot == kv + 100 * 512 * 4
    assert largest_batch_size(hf, 512, 100, free_bytes=10 * per_slot) == 9  # a tenth stays free
    assert largest_batch_size(hf, 512, 100, free_bytes=per_slot) == 0


def test_packed_and_isolated_replays_agree_and_catch_a_perturbed_row(tiny, tmp_path):
    from cot_patching.decoding.replay import replay_attempts

    mine(PROBLEMS, tiny, settings(batch_size=3, max_tries=2), tmp_path, min_pairs=5, progress=False)
    runs = [line.record for line in read_runs(tmp_path / artifacts.RUNS_FILE)]
    broken = replace(runs[7], token_ids=[runs[7].token_ids[0] + 1] + runs[7].token_ids[1:])
    records = runs[:7] + [broken] + runs[8:]
    for isolated in (False, True):
        results = {(r.id, r.attempt): result for r, result in replay_attempts(tiny, records, isolated=isolated)}
        assert len(results) == len(records)
        assert [key for key, result in results.items() if not result.match] == [(broken.id, broken.attempt)]
        assert results[(broken.id, broken.attempt)].first_mismatch == 0


def test_the_plain_twin_shares_the_bridge_tensors_and_its_logits(tiny):
    from cot_patching.decoding.plain import plain_twin

    bridged = tiny.model.original_model
    twin = plain_twin(bridged)
    assert "transformer_lens" not in type(twin.model.layers[0].self_attn).__module__
    shared = {t.data_ptr() for t in bridged.parameters()}
    assert all(t.data_ptr() in shared for t in twin.parameters())  # no copy of any weight
    ids = torch.tensor([list(range(100, 160))])
    with torch.inference_mode():
        assert torch.allclose(twin(ids).logits, bridged(ids).logits, atol=1e-5)
    assert tiny.plain_model() is tiny.plain_model()


def test_grouped_attention_matches_the_plain_twin_at_prefill_and_decode(tiny):
    """Grouped-query attention without repeated K/V computes what Hugging Face's sdpa attention computes."""
    hf = tiny.model.original_model
    assert hf.config.num_attention_heads > hf.config.num_key_value_heads  # the tiny model does group its queries
    cache_len = cache_len_for(WIDTH, 8)
    rows = [BatchRow(p, replace(SAMPLED, max_new_tokens=8), 40 + i) for i, p in enumerate(PROMPTS)] + [None]
    plain = tiny.batched_decoder(4, cache_len, "plain_eager")
    grouped = tiny.batched_decoder(4, cache_len, "grouped_eager")
    assert grouped.hf_model is tiny.plain_model("grouped") and grouped.hf_model is not plain.hf_model
    prompts = [None if row is None else row.prompt_ids for row in rows]
    with torch.inference_mode():
        assert torch.allclose(plain.prefill(prompts, WIDTH), grouped.prefill(prompts, WIDTH), atol=1e-5)
        tokens = torch.tensor([5, 6, 7, 8])
        for _ in range(3):
            assert torch.allclose(plain.step(tokens), grouped.step(tokens), atol=1e-5)


def test_bridge_and_plain_paths_each_replay_their_own_records(tiny):
    rows = [BatchRow(p, SAMPLED, 900 + i) for i, p in enumerate(PROMPTS)] + [None]
    cache_len = cache_len_for(WIDTH, SAMPLED.max_new_tokens)
    for path in ("eager", "plain_eager", "grouped_eager"):
        dec = tiny.batched_decoder(4, cache_len, path)
        first = sample_batch(dec, rows, frozenset(), width=WIDTH)
        again = sample_batch(tiny.batched_decoder(4, cache_len, path), [None, None, rows[2], None], frozenset(),
                             width=WIDTH)
        assert again[2].token_ids == first[2].token_ids and again[2].token_logprobs == first[2].token_logprobs


def test_batched_shards_merge_validate_and_replay(tiny, tmp_path):
    from cot_patching.decoding.replay import replay_attempts
    from cot_patching.mining.merge import merge_shards
    from cot_patching.mining.miner import problems_sha256
    from cot_patching.mining.sharding import Shard, shard_problems

    problems = [Problem(f"m{i}", f"What is 2 + {i}?", str(2 + i), "test") for i in range(6)]
    path = tmp_path / "problems.json"
    path.write_text(json.dumps([{"id": p.id, "question": p.question, "gold_answer": p.gold_answer}
                                for p in problems]))
    shards = []
    for k in range(2):
        shard = tmp_path / f"shard-{k}"
        mine(shard_problems(problems, Shard(k, 2)), tiny,
             settings(problems_sha256=problems_sha256(path), max_tries=2, max_new_tokens=8, batch_size=2,
                      shard=f"{k}/2"),
             shard, min_pairs=5, progress=False, manifest={"model": tiny.info.to_json(), "argv": ["mine"],
                                                          "environment": environment_facts()})
        shards.append(str(shard))
    merge_shards(tmp_path / "merged", shards, problems_path=path, argv=["merge"])
    assert validate_outdir(tmp_path / "merged") == []  # groups are told apart by their shard
    runs = [line.record for line in read_runs(tmp_path / "merged" / artifacts.RUNS_FILE)]
    assert {r.batch["shard"] for r in runs} == {"0/2", "1/2"}
    assert all(result.match for _, result in replay_attempts(tiny, runs))
