from __future__ import annotations

import pytest
import torch
from helpers import mine_scripted_pairs

from cot_patching.activations.cache import CacheSettings, cache_activations, load_activations
from cot_patching.experiments.patching import (
    ResidualPatch,
    answer_target,
    final_answer_target,
    run_with_patches,
    target_logprobs,
)
from cot_patching.runs.directory import load_pairs


@pytest.fixture(scope="module")
def cached(tiny, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    mine_scripted_pairs(tiny, results, n=1)
    acts = results / "activations"
    settings = CacheSettings(layers=(0, 1), hooks=("resid_pre", "resid_post"), steps="early,late")
    cache_activations(tiny, results, acts, settings, tiny.info.to_json(), progress=False)
    return load_pairs(results)[0], load_activations(acts)


def _patch(store, pair_id, trace, step, hook, layer):
    entry = store.entry((pair_id, trace, step, hook, layer))
    return ResidualPatch(layer=layer, positions=entry.positions, values=entry.load(), hook=hook)


def test_patching_own_activations_changes_nothing(tiny, cached):
    pair, store = cached
    record = pair.correct
    tokens = record.prompt_token_ids + record.token_ids
    clean = run_with_patches(tiny, tokens)
    patches = [_patch(store, pair.id, "correct", step, hook, layer)
               for step in ("early", "late") for hook in ("resid_pre", "resid_post") for layer in (0, 1)]
    assert torch.allclose(run_with_patches(tiny, tokens, patches), clean, atol=1e-5)
    context, targets = final_answer_target(record)
    assert torch.allclose(target_logprobs(tiny, context, targets, patches), target_logprobs(tiny, context, targets),
                          atol=1e-5)


def test_patching_other_trace_changes_logits(tiny, cached):
    pair, store = cached
    record = pair.correct
    donor = store.entry((pair.id, "incorrect", "late", "resid_post", 0))
    own = store.entry((pair.id, "correct", "late", "resid_post", 0))
    n = min(len(donor.positions), len(own.positions))
    patch = ResidualPatch(layer=0, positions=own.positions[:n], values=donor.load()[:n])
    context, targets = final_answer_target(record)
    clean = target_logprobs(tiny, context, targets)
    patched = target_logprobs(tiny, context, targets, [patch])
    assert not torch.allclose(clean, patched, atol=1e-4)
    # positions before the patch are untouched (causal model)
    tokens = record.prompt_token_ids + record.token_ids
    before = min(own.positions)
    assert torch.allclose(run_with_patches(tiny, tokens, [patch])[:before], run_with_patches(tiny, tokens)[:before],
                          atol=1e-6)


def test_target_logprobs_match_a_manual_forward(tiny, cached):
    pair, _ = cached
    context, targets = final_answer_target(pair.correct)
    with torch.inference_mode():
        logits = tiny.logits(torch.tensor([context + targets]))[0]
    manual = torch.log_softmax(logits, -1)[len(context) - 1, targets[0]]
    assert torch.isclose(target_logprobs(tiny, context, targets)[0], manual, atol=1e-5)


def test_gold_answer_target_tokens(tiny, cached):
    pair, _ = cached
    context, targets = answer_target(tiny, pair.incorrect, "7")
    assert tiny.tokenizer.decode(targets).strip() == "7"
    assert context == final_answer_target(pair.incorrect)[0]


def test_patch_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        ResidualPatch(layer=0, positions=[1, 2], values=torch.zeros(3, 4))
