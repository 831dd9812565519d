from __future__ import annotations

import pytest
import torch

from cot_patching.models import loading as models
from cot_patching.models.loading import ModelLoadError, load_model, resolve_model, stop_token_ids


def test_resolve_hub_names_and_alias():
    assert resolve_model("meta-llama/Meta-Llama-3.1-8B-Instruct").name == "meta-llama/Llama-3.1-8B-Instruct"
    assert resolve_model("Qwen/Qwen2.5-3B-Instruct").kind == "hub"


@pytest.mark.parametrize("spec, message", [
    ("llama", "unknown model"), ("a/b/c", "unknown model"), ("./missing-dir", "does not exist"),
    ("missing.gguf", "does not exist"),
])
def test_unknown_models_are_refused(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        resolve_model(spec)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_embedded_resolves_to_packaged_gguf():
    source = resolve_model("embedded")
    assert source.kind == "embedded" and source.gguf_file.endswith(".gguf")


def test_local_directory_loads_offline(tiny, tiny_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model(str(tiny_dir), device="cpu")
    assert loaded.info.source == "local_dir" and loaded.info.n_layers == 2
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        assert torch.equal(loaded.logits(ids), tiny.logits(ids))


def test_unknown_hub_model_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot load model 'nobody/no-such-model'"):
        load_model("nobody/no-such-model", device="cpu", fallback=False)


def test_oom_walks_the_fallback_chain_and_records_it(monkeypatch, tiny):
    tried = []

    def fake_load_one(source, device, dtype, revision, load_in_4bit, backend):
        tried.append(source.name)
        if source.name != "Qwen/Qwen2.5-3B-Instruct":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return models.LoadedModel(tiny.model, tiny.tokenizer, models.ModelInfo(**tiny.info.to_json()),
                                  tiny.stop_token_ids)

    monkeypatch.setattr(models, "_load_one", fake_load_one)
    loaded = load_model("meta-llama/Meta-Llama-3.1-8B-Instruct", device="cpu")
    assert tried == list(models.FALLBACK_CHAIN)
    assert [f["model"] for f in loaded.info.fallback_from] == list(models.FALLBACK_CHAIN[:2])
    assert "CUDA OOM" in loaded.info.fallback_from[0]["reason"]


def test_oom_on_last_model_is_an_error(monkeypatch):
    def fake_load_one(source, *args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(models, "_load_one", fake_load_one)
    with pytest.raises(ModelLoadError, match="no smaller fallback"):
        load_model("Qwen/Qwen2.5-3B-Instruct", device="cpu")


def test_stop_ids_include_end_of_turn(llama3_tokenizer, smollm2_tokenizer):
    assert llama3_tokenizer.convert_tokens_to_ids("<|eot_id|>") in stop_token_ids(llama3_tokenizer)
    assert smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(smollm2_tokenizer)


def test_embedded_model_loads_and_the_bridge_matches_hf_logits_exactly(embedded):
    assert embedded.info.source == "embedded" and embedded.info.dtype == "float32"
    assert embedded.info.revision.startswith("sha256:")
    assert "blocks.0.hook_resid_post" in embedded.model.hook_dict
    if embedded.info.backend != "bridge":
        pytest.skip("the hooked backend keeps no HF model (its comparison: test_backends.py)")
    ids = torch.tensor([[1, 4093, 198, 1780, 314, 216, 34]])
    with torch.inference_mode():
        bridge = embedded.logits(ids)
        hf = embedded.model.original_model(ids).logits
    assert torch.equal(bridge, hf)
