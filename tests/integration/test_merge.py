"""Shards and merge: N shard directories merge into exactly what one process would have written."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import CORRECT, UNPARSED, WRONG, ScriptedSampler

from cot_patching.mining.merge import merge_shards
from cot_patching.mining.miner import MiningError, mine, problems_sha256
from cot_patching.mining.settings import MineSettings
from cot_patching.mining.sharding import Shard, parse_shard, shard_index, shard_problems
from cot_patching.problems import Problem

MAX_TRIES = 3
PATTERNS = [  # one outcome script per problem (attempt 0, 1, 2)
    [WRONG, CORRECT, CORRECT], [UNPARSED, UNPARSED, UNPARSED], [CORRECT, WRONG, WRONG], [WRONG, WRONG, CORRECT],
    [UNPARSED, WRONG, WRONG], [CORRECT, CORRECT, CORRECT], [WRONG, UNPARSED, CORRECT], [CORRECT, UNPARSED, WRONG],
    [UNPARSED, CORRECT, WRONG], [WRONG, CORRECT, UNPARSED], [CORRECT, WRONG, UNPARSED], [UNPARSED, UNPARSED, WRONG],
]
FILES = ("runs.jsonl", "pairs.jsonl", "pairs_summary.csv")


@pytest.fixture(scope="module")
def problem_file(tmp_path_factory):
    problems = [Problem(f"p{i:02d}", f"What is 2 + 3? (variant {i})", "5") for i in range(len(PATTERNS))]
    path = tmp_path_factory.mktemp("data") / "problems.json"
    path.write_text(json.dumps([{"id": p.id, "question": p.question, "gold_answer": p.gold_answer,
                                 "source": "test"} for p in problems]))
    return path, problems


def _mine(tiny, problem_file, outdir, min_pairs, shard=None, fail_after=None):
    path, problems = problem_file
    settings = MineSettings(model=tiny.info.name, problems_sha256=problems_sha256(path), max_tries=MAX_TRIES,
                            shard=shard)
    chosen = shard_problems(problems, parse_shard(shard)) if shard else problems
    sampler = ScriptedSampler(tiny.tokenizer, {p.id: PATTERNS[i] for i, p in enumerate(problems)}, fail_after)
    manifest = {"model": tiny.info.to_json(), "options": {"problems": str(path), "min_pairs": min_pairs},
                "environment": {"versions": {"torch": "x"}}, "decode_path": "eager"}
    mine(chosen, tiny, settings, outdir, min_pairs=min_pairs, manifest=manifest, progress=False, sampler=sampler)


def _same_as_single(single, merged):
    for name in FILES:
        assert (merged / name).read_bytes() == (single / name).read_bytes(), name
    assert json.loads((merged / "summary.json").read_text()) == json.loads((single / "summary.json").read_text())


def test_shards_partition_the_problems_stably():
    ids = [f"gsm8k-test-{i:04d}" for i in range(300)]
    parts = [[i for i in ids if Shard(k, 3).holds(i)] for k in range(3)]
    assert sorted(sum(parts, [])) == sorted(ids) and all(len(part) > 60 for part in parts)
    assert [shard_index(i, 3) for i in ids] == [shard_index(i, 3) for i in ids]
    for bad in ("3/3", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


@pytest.mark.parametrize("min_pairs", [100, 3])
def test_merge_of_three_shards_equals_one_process(tiny, problem_file, tmp_path, min_pairs):
    single = tmp_path / "single"
    _mine(tiny, problem_file, single, min_pairs)
    shards = [tmp_path / f"shard{k}" for k in range(3)]
    for k, outdir in enumerate(shards):
        _mine(tiny, problem_file, outdir, min_pairs, shard=f"{k}/3")
    merged = tmp_path / "merged"
    report = merge_shards(merged, [str(s) for s in reversed(shards)])
    _same_as_single(single, merged)
    manifest = json.loads((merged / "manifest.json").read_text())
    assert [entry["shard"] for entry in manifest["shards"]] == ["0/3", "1/3", "2/3"]
    assert manifest["settings"]["shard"] is None
    if min_pairs == 3:
        assert report.pairs == 3 and report.dropped_problems  # shards mined past the single process's stop
        assert manifest["merge"]["dropped_problems"] == report.dropped_problems
    before = {name: (merged / name).read_bytes() for name in FILES}
    merge_shards(merged, [str(s) for s in shards])  # idempotent
    assert {name: (merged / name).read_bytes() for name in FILES} == before


def test_merge_after_a_killed_and_resumed_shard(tiny, problem_file, tmp_path):
    single = tmp_path / "single"
    _mine(tiny, problem_file, single, 100)
    shards = [tmp_path / f"shard{k}" for k in range(3)]
    for k, outdir in enumerate(shards):
        _mine(tiny, problem_file, outdir, 100, shard=f"{k}/3")
    with pytest.raises(KeyboardInterrupt):
        _mine(tiny, problem_file, tmp_path / "killed", 100, shard="1/3", fail_after=2)
    with pytest.raises(MiningError, match="not finished"):
        merge_shards(tmp_path / "m0", [str(shards[0]), str(tmp_path / "killed"), str(shards[2])])
    partial = merge_shards(tmp_path / "m1", [str(shards[0]), str(tmp_path / "killed"), str(shards[2])],
                           partial=True)
    assert partial.missing and "shard 1/3" in partial.missing[0]
    _mine(tiny, problem_file, tmp_path / "killed", 100, shard="1/3")  # resume
    merge_shards(tmp_path / "merged", [str(shards[0]), str(tmp_path / "killed"), str(shards[2])])
    _same_as_single(single, tmp_path / "merged")


def test_merge_refuses_mismatched_or_missing_shards(tiny, problem_file, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _mine(tiny, problem_file, a, 100, shard="0/2")
    _mine(tiny, problem_file, b, 100, shard="1/2")
    other = tmp_path / "other"
    path, problems = problem_file
    settings = MineSettings(model=tiny.info.name, problems_sha256=problems_sha256(path), max_tries=2, shard="1/2")
    sampler = ScriptedSampler(tiny.tokenizer, {p.id: PATTERNS[i] for i, p in enumerate(problems)})
    mine(shard_problems(problems, Shard(1, 2)), tiny, settings, other, min_pairs=100, progress=False,
         sampler=sampler, manifest={"model": tiny.info.to_json(), "options": {"problems": str(path), "min_pairs": 100}})
    with pytest.raises(MiningError, match="different settings.*max_tries"):
        merge_shards(tmp_path / "m", [str(a), str(other)])
    with pytest.raises(MiningError, match="missing"):
        merge_shards(tmp_path / "m", [str(a)])
    with pytest.raises(MiningError, match="both shard 0/2"):
        merge_shards(tmp_path / "m", [str(a), str(a)])
    single = tmp_path / "single"
    _mine(tiny, problem_file, single, 100)
    with pytest.raises(MiningError, match="not a shard"):
        merge_shards(tmp_path / "m", [str(a), str(single)])
    with pytest.raises(MiningError, match="holds a mining run"):
        merge_shards(single, [str(a), str(b)])
    assert replace(settings, shard=None).shard is None


def test_shards_on_different_gpus_of_one_kind_merge_but_not_on_different_kinds(tiny, problem_file, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _mine(tiny, problem_file, a, 100, shard="0/2")
    _mine(tiny, problem_file, b, 100, shard="1/2")

    def set_device(shard: Path, device: str) -> None:
        manifest = json.loads((shard / "manifest.json").read_text())
        manifest["model"]["device"] = device
        (shard / "manifest.json").write_text(json.dumps(manifest))

    set_device(a, "cuda:0")
    set_device(b, "cuda:1")
    merge_shards(tmp_path / "m", [str(a), str(b)])  # `mine --devices cuda:0,cuda:1` writes exactly these
    set_device(b, "cpu")
    with pytest.raises(MiningError, match="different model.*'cuda', 'cpu'"):
        merge_shards(tmp_path / "m2", [str(a), str(b)])


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def test_merge_never_replaces_what_is_not_its_own_merge(tiny, problem_file, tmp_path):
    """Issue 32.3: a folder without a manifest, or an earlier merge of OTHER shards, is refused untouched."""
    shards = [tmp_path / f"s{k}" for k in range(2)]
    for k, outdir in enumerate(shards):
        _mine(tiny, problem_file, outdir, 100, shard=f"{k}/2")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "runs.jsonl").write_text('{"mine": "not yours"}\n' * 1000)
    before = _tree(foreign)
    with pytest.raises(MiningError, match="holds runs.jsonl but no manifest.json"):
        merge_shards(foreign, [str(s) for s in shards])
    assert _tree(foreign) == before

    merged = tmp_path / "merged"
    merge_shards(merged, [str(s) for s in shards])
    others = [tmp_path / f"o{k}" for k in range(2)]
    for k, outdir in enumerate(others):
        _mine(tiny, problem_file, outdir, 100, shard=f"{k}/2")
    before = _tree(merged)
    with pytest.raises(MiningError, match="is a merge of other shards"):
        merge_shards(merged, [str(o) for o in others])
    assert _tree(merged) == before
    merge_shards(merged, [str(s) for s in shards])  # the same shards again: allowed, same bytes
    assert {k: v for k, v in _tree(merged).items() if k != "manifest.json"} == \
        {k: v for k, v in before.items() if k != "manifest.json"}


def test_merge_removes_the_temporaries_a_killed_merge_left(tiny, problem_file, tmp_path):
    """Issue 32.9: temp files of a merge killed in its write phase are removed by the next merge."""
    shards = [tmp_path / f"s{k}" for k in range(2)]
    for k, outdir in enumerate(shards):
        _mine(tiny, problem_file, outdir, 100, shard=f"{k}/2")
    merged = tmp_path / "merged"
    merge_shards(merged, [str(s) for s in shards])
    (merged / "runs.jsonl.tmp").write_bytes(b"partial")
    (merged / ".runs.jsonl.abc123.tmp").write_bytes(b"partial")
    (merged / ".notes.txt.keep.tmp").write_bytes(b"not ours")
    merge_shards(merged, [str(s) for s in shards])
    names = {p.name for p in merged.iterdir()}
    assert "runs.jsonl.tmp" not in names and ".runs.jsonl.abc123.tmp" not in names
    assert ".notes.txt.keep.tmp" in names  # only our own temp names are removed


@pytest.mark.parametrize("damage, message", [
    (lambda m: [m], "is not a JSON object"),
    (lambda m: {**m, "settings": {k: v for k, v in m["settings"].items() if k != "schedule"}}, "settings.schedule"),
    (lambda m: {**m, "sessions": ["x"]}, "sessions is not a list of session objects"),
    (lambda m: {k: v for k, v in m.items() if k != "sessions"}, "sessions is missing"),
    (lambda m: {**m, "sessions": [{**m["sessions"][-1], "options": {}}]}, "records no min_pairs"),
])
def test_merge_refuses_a_damaged_shard_manifest_with_one_line(tiny, problem_file, tmp_path, damage, message):
    """Issue 32.6/32.7: damaged shard manifests are refused by name, not a traceback or a silent min_pairs 20."""
    shards = [tmp_path / f"s{k}" for k in range(2)]
    for k, outdir in enumerate(shards):
        _mine(tiny, problem_file, outdir, 100, shard=f"{k}/2")
    manifest_path = shards[1] / "manifest.json"
    manifest_path.write_text(json.dumps(damage(json.loads(manifest_path.read_text()))))
    with pytest.raises(Exception, match=message) as caught:
        merge_shards(tmp_path / "m", [str(s) for s in shards])
    assert str(manifest_path) in str(caught.value) and not (tmp_path / "m").exists()
