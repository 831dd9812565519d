from __future__ import annotations

import json

import pytest
import torch
from helpers import mine_scripted_pairs

from cot_patching.activations.cache import (
    INDEX_FILE,
    CacheSettings,
    cache_activations,
    hook_name,
    load_activations,
    parse_layers,
    read_index,
)
from cot_patching.runs.directory import load_pairs
from cot_patching.runs.files import ArtifactError

ALL_HOOKS = ("resid_pre", "resid_mid", "resid_post")


@pytest.fixture(scope="module")
def results(tiny, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("results")
    mine_scripted_pairs(tiny, outdir, n=3)
    return outdir


def _settings(**kw):
    return CacheSettings(**{"layers": (0, 1), "hooks": ALL_HOOKS, "steps": "early,late", "dtype": "fp32", **kw})


def test_load_pairs_joins_runs(results):
    pairs = load_pairs(results)
    assert [p.id for p in pairs] == ["q0", "q1", "q2"]
    pair = pairs[0]
    assert pair.correct.correct and not pair.incorrect.correct and pair.incorrect.parse_ok
    assert pair.pair.steps_selected["early"]["step_idx"] == 2 and pair.pair.steps_selected["late"]["step_idx"] == 3


def _fresh(model, record, name, positions):
    tokens = torch.tensor([record.prompt_token_ids + record.token_ids])
    with torch.inference_mode():
        _, cache = model.model.run_with_cache(tokens, names_filter=lambda n: n == name)
    return cache[name][0, positions]


def test_cached_tensors_equal_a_fresh_run_with_cache(tiny, results, tmp_path):
    report = cache_activations(tiny, results, tmp_path, _settings(), tiny.info.to_json(), progress=False)
    assert report.cached == 3 and report.skipped == 0
    store = load_activations(tmp_path)
    assert len(store) == 3 * 2 * 2 * 3 * 2  # pairs x traces x steps x hooks x layers
    pairs = {p.id: p for p in load_pairs(results)}
    for key in store:
        entry = store.entry(key)
        record = pairs[key.pair_id].trace(key.trace)
        fresh = _fresh(tiny, record, hook_name(key.layer, key.hook), entry.positions)
        assert torch.allclose(store[key], fresh, atol=1e-6), key
        offset = len(record.prompt_token_ids)
        assert entry.token_ids == [(record.prompt_token_ids + record.token_ids)[p] for p in entry.positions]
        span = next(s for s in record.step_spans if s["step_idx"] == entry.step_idx)
        assert entry.positions == list(range(offset + span["tok_start"], offset + span["tok_end"]))
    # the incorrect trace's steps follow the same rule on its own parse
    incorrect_early = store.entry(("q0", "incorrect", "early", "resid_post", 0))
    assert incorrect_early.step_idx == 1  # "**Step 1:** Tom has 3 apples." has a digit


def test_rerun_after_interruption_gives_same_index_and_tensors(tiny, results, tmp_path):
    reference = tmp_path / "reference"
    cache_activations(tiny, results, reference, _settings(), tiny.info.to_json(), progress=False)
    interrupted = tmp_path / "interrupted"
    cache_activations(tiny, results, interrupted, _settings(), tiny.info.to_json(), progress=False)
    lines = (interrupted / INDEX_FILE).read_text().splitlines(keepends=True)
    # a kill after the second file was written but mid-way through its index line
    (interrupted / INDEX_FILE).write_text(lines[0] + lines[1][:40])
    (interrupted / json.loads(lines[2])["file"]).unlink()
    report = cache_activations(tiny, results, interrupted, _settings(), tiny.info.to_json(), progress=False)
    assert (report.cached, report.skipped) == (2, 1)
    assert read_index(interrupted) == read_index(reference)
    for name in sorted(p.name for p in reference.glob("*.safetensors")):
        assert (interrupted / name).read_bytes() == (reference / name).read_bytes()
    assert len(list(interrupted.glob("*.safetensors"))) == 3 and not list(interrupted.glob("*.tmp"))


def test_rerun_detects_a_damaged_file(tiny, results, tmp_path):
    cache_activations(tiny, results, tmp_path, _settings(), tiny.info.to_json(), progress=False)
    victim = tmp_path / read_index(tmp_path)[1]["file"]
    victim.write_bytes(victim.read_bytes()[:100])
    report = cache_activations(tiny, results, tmp_path, _settings(), tiny.info.to_json(), progress=False)
    assert report.cached == 1 and len(report.repaired) == 1
    assert len(read_index(tmp_path)) == 3


def test_different_settings_are_refused(tiny, results, tmp_path):
    cache_activations(tiny, results, tmp_path, _settings(), tiny.info.to_json(), progress=False)
    with pytest.raises(ValueError, match="different settings"):
        cache_activations(tiny, results, tmp_path, _settings(layers=(0,)), tiny.info.to_json(), progress=False)


def test_bf16_storage_and_all_steps(tiny, results, tmp_path):
    cache_activations(tiny, results, tmp_path, _settings(dtype="bf16", steps="all", hooks=("resid_post",)),
                      tiny.info.to_json(), progress=False)
    store = load_activations(tmp_path)
    key = ("q0", "correct", "step1", "resid_post", 1)
    assert store[key].dtype == torch.bfloat16
    assert {k.step for k in store if k.pair_id == "q0" and k.trace == "correct"} == {"step1", "step2", "step3"}


@pytest.mark.parametrize("kwargs", [{"layers": ()}, {"hooks": ("resid_foo",)}, {"steps": "middle"},
                                    {"dtype": "int8"}])
def test_bad_cache_settings(kwargs):
    with pytest.raises(ValueError):
        _settings(**kwargs)


def test_parse_layers():
    assert parse_layers("all", 3) == (0, 1, 2)
    assert parse_layers("0,2", 3) == (0, 2)
    with pytest.raises(ValueError):
        parse_layers("5", 3)
    with pytest.raises(ValueError):
        parse_layers("a", 3)


def test_results_dir_without_pairs_is_an_error(tmp_path):
    with pytest.raises(ArtifactError, match="not a mining output directory"):
        load_pairs(tmp_path)


def test_embedded_model_cache_matches_fresh_run(embedded, tmp_path):
    results = tmp_path / "results"
    mine_scripted_pairs(embedded, results, n=1)
    settings = CacheSettings(layers=(0, 15, 29), hooks=("resid_post",), steps="early,late", dtype="fp32")
    cache_activations(embedded, results, tmp_path / "acts", settings, embedded.info.to_json(), progress=False)
    store = load_activations(tmp_path / "acts")
    pair = load_pairs(results)[0]
    for key in store:
        entry = store.entry(key)
        fresh = _fresh(embedded, pair.trace(key.trace), hook_name(key.layer, key.hook), entry.positions)
        assert torch.allclose(store[key], fresh, atol=1e-5)


def test_overwrite_deletes_only_what_the_cache_wrote(tiny, results, tmp_path):
    cache = tmp_path / "cache"
    cache_activations(tiny, results, cache, _settings(), tiny.info.to_json(), progress=False)
    written = sorted(p.name for p in cache.iterdir())
    cache_activations(tiny, results, cache, _settings(layers=(0,)), tiny.info.to_json(), overwrite=True,
                      progress=False)  # positive control: its own files are replaced
    assert sorted(p.name for p in cache.iterdir()) == written
    foreign = cache / "model-00001-of-00004.safetensors"
    foreign.write_bytes(b"weights")
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    with pytest.raises(ArtifactError, match="model-00001-of-00004.safetensors, which cache-activations "
                                                      "did not write: nothing was deleted"):
        cache_activations(tiny, results, cache, _settings(), tiny.info.to_json(), overwrite=True, progress=False)
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before


def test_a_folder_that_is_not_a_cache_is_refused_with_or_without_overwrite(tiny, results, tmp_path):
    weights = tmp_path / "Llama-3.1-8B"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    (weights / "model.safetensors").write_bytes(b"weights")
    for overwrite in (False, True):
        with pytest.raises(ArtifactError, match="is not an activation cache"):
            cache_activations(tiny, results, weights, _settings(), tiny.info.to_json(), overwrite=overwrite,
                              progress=False)
    assert sorted(p.name for p in weights.iterdir()) == ["config.json", "model.safetensors"]


def test_mine_overwrite_refuses_a_run_whose_activations_folder_holds_foreign_files(tiny, tmp_path):
    from cot_patching.mining.miner import mine
    from cot_patching.mining.settings import MineSettings

    run = tmp_path / "run"
    mine_scripted_pairs(tiny, run, n=1)
    (run / "activations").mkdir()
    (run / "activations" / "keep-me.safetensors").write_bytes(b"not ours")
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(ArtifactError, match="keep-me.safetensors"):
        mine([], tiny, MineSettings(model=tiny.info.name, problems_sha256="y"), run, overwrite=True, progress=False)
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_cache_files_follow_the_umask(tiny, results, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        cache_activations(tiny, results, tmp_path / "cache", _settings(), tiny.info.to_json(), progress=False)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "cache").iterdir()}
    assert set(modes.values()) == {0o644}, modes


@pytest.mark.parametrize("per_forward", [3, 4])
def test_several_traces_per_forward_equal_one_per_forward(tiny, results, tmp_path, per_forward):
    one, batched = tmp_path / "one", tmp_path / "batched"
    cache_activations(tiny, results, one, _settings(), tiny.info.to_json(), progress=False)
    cache_activations(tiny, results, batched, _settings(), tiny.info.to_json(), progress=False,
                      traces_per_forward=per_forward)
    alone, together = load_activations(one), load_activations(batched)
    assert list(alone) == list(together)
    for key in alone:
        a, b = alone[key], together[key]
        assert alone.entry(key).positions == together.entry(key).positions
        assert torch.allclose(b, a, rtol=1e-5, atol=1e-6), key  # the stated tolerance: fp32, 1e-5 relative
    # Negative control: a trace shifted by one position is far outside that tolerance.
    key = next(iter(alone))
    shifted = torch.roll(alone[key], 1, dims=0)
    assert not torch.allclose(shifted, together[key], rtol=1e-5, atol=1e-6)


def test_traces_per_forward_is_validated(tiny, results, tmp_path):
    with pytest.raises(ValueError, match="traces per forward must be >= 1"):
        cache_activations(tiny, results, tmp_path, _settings(), tiny.info.to_json(), progress=False,
                          traces_per_forward=0)
