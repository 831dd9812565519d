"""Canaries for dependency drift: our greedy tokens == plain Hugging Face `generate` today == the stored goldens.

A transformers release that changes the KV-cache API (5.24 renamed `past_key_values` to `cache`) made our decoders
emit garbage while plain `generate` stayed right; these tests fail on that, and the load-time cache check refuses
such a model outright. `scripts/check_newest_versions.sh` runs them against the newest releases.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from golden_tokens import QWEN_GGUF, load_golden, mining_prompts, model_spec, plain_greedy, plain_hf_model

from cot_patching.decoding.batched import BatchRow, cache_len_for, sample_batch
from cot_patching.decoding.sampling import DecodeConfig, sample
from cot_patching.models.backends import BRIDGE
from cot_patching.models.loading import CacheCheckError, LoadedModel, check_kv_cache, load_model

pytestmark = pytest.mark.canary
MODELS = ["embedded", pytest.param("qwen2.5-coder-0.5b", marks=pytest.mark.skipif(
    not QWEN_GGUF.is_file(), reason="scripts/fetch_qwen_coder_gguf.sh not run"))]


@pytest.fixture(scope="module", params=MODELS)
def golden_model(request: pytest.FixtureRequest) -> tuple[str, LoadedModel, Any]:
    """(key, our loaded model, a separately loaded plain Hugging Face model) of each golden model."""
    key = request.param
    loaded = load_model(model_spec(key), device="cpu", dtype="fp32")
    hf_model, _ = plain_hf_model(model_spec(key))
    return key, loaded, hf_model


def test_the_stored_goldens_name_the_installed_model_files(golden_model: tuple[str, LoadedModel, Any]) -> None:
    key, loaded, _ = golden_model
    assert loaded.info.revision == load_golden()[key]["revision"]


def test_plain_generate_still_gives_the_golden_tokens(golden_model: tuple[str, LoadedModel, Any]) -> None:
    key, loaded, hf_model = golden_model
    golden = load_golden()[key]
    for prompt in golden["prompts"]:
        got = plain_greedy(hf_model, prompt["prompt_ids"], golden["max_new_tokens"], loaded.stop_token_ids)
        assert got == prompt["token_ids"], f"{key} {prompt['id']}: plain generate drifted from the golden tokens"


def test_our_batch_1_greedy_equals_plain_generate_and_the_goldens(golden_model: tuple[str, LoadedModel, Any]) -> None:
    key, loaded, hf_model = golden_model
    golden = load_golden()[key]
    for problem_id, prompt_ids in mining_prompts(loaded.tokenizer):
        stored = next(p for p in golden["prompts"] if p["id"] == problem_id)
        assert prompt_ids == stored["prompt_ids"], f"{problem_id}: the prompt tokenizes differently"
        ours = sample(loaded, prompt_ids, DecodeConfig(0.0, 1.0, golden["max_new_tokens"]), seed=0).token_ids
        plain = plain_greedy(hf_model, prompt_ids, golden["max_new_tokens"], loaded.stop_token_ids)
        assert ours == plain, f"{key} {problem_id}: our greedy tokens differ from plain generate's"
        assert ours == stored["token_ids"], f"{key} {problem_id}: our greedy tokens differ from the goldens"


def test_our_batched_greedy_equals_the_goldens(golden_model: tuple[str, LoadedModel, Any]) -> None:
    key, loaded, _ = golden_model
    if loaded.info.backend != "bridge":
        pytest.skip("batched decoding runs on the bridge only")
    golden = load_golden()[key]
    config = DecodeConfig(0.0, 1.0, golden["max_new_tokens"])
    rows = [BatchRow(p["prompt_ids"], config, seed=0) for p in golden["prompts"]]
    width = max(len(row.prompt_ids) for row in rows)
    decoder = loaded.batched_decoder(len(rows), cache_len_for(width, config.max_new_tokens))
    generations = sample_batch(decoder, rows, loaded.stop_token_ids)
    for prompt, generation in zip(golden["prompts"], generations):
        assert generation is not None and generation.token_ids == prompt["token_ids"], f"{key} {prompt['id']}: batched greedy differs"


def test_the_load_time_check_refuses_a_model_whose_cache_is_ignored(embedded: LoadedModel,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: a step that drops its cache (what transformers 5.24 did to the bridge) is refused."""
    original = LoadedModel.step
    monkeypatch.setattr(LoadedModel, "step", lambda self, ids, past: original(self, ids, None))
    with pytest.raises(CacheCheckError, match="differ from the full forward"):
        check_kv_cache(embedded)


def test_the_load_time_check_refuses_a_batched_decoder_whose_cache_is_ignored(embedded: LoadedModel,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control of the batched half: each decode step attending to its own token alone is refused, though
    the batched path is checked against its own modules' full forward (not the bridge's)."""
    import cot_patching.decoding.plain as plain

    if embedded.info.backend != BRIDGE:
        pytest.skip("the batched decoder runs the bridge's Hugging Face model; HookedTransformer has none")
    original = plain.grouped_attention

    def own_token_only(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
        if query.shape[2] == 1:  # decode: only the newest key/value, as a cache the step ignores
            return original(module, query, key[:, :, -1:], value[:, :, -1:], None, **kwargs)
        return original(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(plain, "grouped_attention", own_token_only)
    embedded._graphed.pop("grouped", None)  # rebuild the twin with the broken attention registered
    try:
        with pytest.raises(CacheCheckError, match="differ from the full forward"):
            check_kv_cache(embedded)
    finally:
        embedded._graphed.pop("grouped", None)
        monkeypatch.undo()
        plain.register_grouped_attention()


def test_grouped_twin_is_causal_without_a_mask(embedded: LoadedModel) -> None:
    """A full forward of the grouped twin with no attention mask (one unpadded sequence) equals the sdpa twin's:
    causal, as Hugging Face's sdpa is when given no mask."""
    if embedded.info.backend != BRIDGE:
        pytest.skip("the plain twins are built from the bridge's Hugging Face model; HookedTransformer has none")
    ids = torch.tensor([[5, 17, 3, 99, 42, 7]])
    with torch.inference_mode():
        grouped = embedded.plain_model("grouped")(ids).logits
        plain_sdpa = embedded.plain_model("plain")(ids).logits
    assert torch.allclose(grouped, plain_sdpa, atol=1e-4)


def test_without_the_cache_hand_over_the_bridge_decodes_garbage_on_transformers_5_24(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control of the fix itself: where transformers passes `cache=`, the bridge needs the hand-over."""
    from transformers import LlamaForCausalLM

    import cot_patching.models.backends as backends
    from cot_patching.decoding.hf_cache import cache_keyword

    if BRIDGE not in backends.available_backends():
        pytest.skip("the hand-over is the bridge's; HookedTransformer (TransformerLens 3.9) runs its own attention")
    if cache_keyword(LlamaForCausalLM) != "cache":
        pytest.skip("this transformers passes the cache as past_key_values, which the bridge reads itself")
    monkeypatch.setattr(backends, "hand_cache_to_attention", lambda bridge: 0)
    with pytest.raises(CacheCheckError, match="breaks cached decoding"):
        load_model("embedded", device="cpu", dtype="fp32", backend=BRIDGE)


def test_check_kv_cache_passes_on_every_loaded_model(embedded: LoadedModel) -> None:
    assert check_kv_cache(embedded) < 1e-3
    assert torch.isfinite(embedded.logits(torch.tensor([[1, 2, 3]]))).all()
