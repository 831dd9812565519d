"""Backends: choosing one, loading HookedTransformer for any model, and both giving the same hooks and tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_hf_model
from helpers import mine_scripted_pairs

from cot_patching.activations.cache import CacheSettings, cache_activations
from cot_patching.decoding.sampling import DecodeConfig, sample
from cot_patching.models import backends
from cot_patching.models.backends import BRIDGE, HOOKED, BackendError, available_backends, resolve_backend
from cot_patching.models.loading import EMBEDDED, ModelLoadError, from_hf_model, load_model
from cot_patching.traces.prompt import build_prompt, encode_prompt

TL_MAJOR = int((backends.transformer_lens_version() or "0").split(".")[0])
needs_hooked = pytest.mark.skipif(HOOKED not in available_backends(),
                                  reason="HookedTransformer needs TransformerLens 3.9 (the `hooked` extra)")
needs_both = pytest.mark.skipif(available_backends() != backends.BACKENDS,
                                reason="both backends in one environment: TransformerLens 3.9")


def hooked_transformer_hooks(n_layers: int, pos: int, d_model: int, n_heads: int, n_kv_heads: int, d_head: int,
                             d_mlp: int, d_vocab: int) -> dict[str, tuple[int, ...]]:
    """HookedTransformer's hook names and activation shapes for a rotary, RMS-norm, gated-MLP GQA model."""
    hooks: dict[str, tuple[int, ...]] = {"hook_embed": (1, pos, d_model), "ln_final.hook_normalized": (1, pos, d_model),
                                         "ln_final.hook_scale": (1, pos, 1), "unembed.hook_in": (1, pos, d_model),
                                         "unembed.hook_out": (1, pos, d_vocab)}
    for layer in range(n_layers):
        block = f"blocks.{layer}"
        for name in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                     "ln1.hook_normalized", "ln2.hook_normalized"):
            hooks[f"{block}.{name}"] = (1, pos, d_model)
        hooks.update({f"{block}.ln1.hook_scale": (1, pos, 1), f"{block}.ln2.hook_scale": (1, pos, 1)})
        for name in ("hook_q", "hook_rot_q", "hook_z"):
            hooks[f"{block}.attn.{name}"] = (1, pos, n_heads, d_head)
        for name in ("hook_k", "hook_rot_k", "hook_v"):
            hooks[f"{block}.attn.{name}"] = (1, pos, n_kv_heads, d_head)
        for name in ("hook_attn_scores", "hook_pattern"):
            hooks[f"{block}.attn.{name}"] = (1, n_heads, pos, pos)
        for name in ("mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post"):
            hooks[f"{block}.{name}"] = (1, pos, d_mlp)
    return hooks


def test_auto_backend_follows_the_installed_transformer_lens():
    assert resolve_backend(None) == (HOOKED if TL_MAJOR < 4 else BRIDGE)
    assert resolve_backend("auto") == resolve_backend(None)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(BackendError, match="unknown backend 'hookd'; choose bridge, hooked or auto"):
        resolve_backend("hookd")


@pytest.mark.skipif(HOOKED in available_backends(), reason="HookedTransformer is installed here")
def test_forcing_hooked_without_transformer_lens_3_says_how_to_install(tiny_dir):
    with pytest.raises(BackendError, match=r"cot-patching\[hooked\]"):
        load_model(str(tiny_dir), device="cpu", backend=HOOKED)


@pytest.mark.parametrize("backend", [pytest.param(b, marks=pytest.mark.skipif(
    b not in available_backends(), reason=f"{b} not installed")) for b in backends.BACKENDS])
def test_every_hookedtransformer_hook_exists_with_its_shape(smollm2_tokenizer, backend):
    model = from_hf_model(tiny_hf_model(smollm2_tokenizer), smollm2_tokenizer, "tiny", backend=backend)
    expected = hooked_transformer_hooks(n_layers=2, pos=7, d_model=64, n_heads=4, n_kv_heads=2, d_head=16,
                                         d_mlp=128, d_vocab=len(smollm2_tokenizer))
    with torch.inference_mode():
        _, cache = model.model.run_with_cache(torch.tensor([[1, 2, 3, 4, 5, 6, 7]]))
    shapes = {name: tuple(cache[name].shape) for name in cache.keys()}
    if backend == HOOKED:
        assert shapes == expected
    else:  # the bridge adds its own hook_in/hook_out points on top of HookedTransformer's
        assert {name: shapes.get(name) for name in expected} == expected
    assert model.info.backend == backend


@needs_both
def test_backends_cache_the_same_activations(smollm2_tokenizer):
    hf = tiny_hf_model(smollm2_tokenizer)
    bridge, hooked = (from_hf_model(hf, smollm2_tokenizer, "tiny", backend=b) for b in backends.BACKENDS)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9]])
    with torch.inference_mode():
        _, from_bridge = bridge.model.run_with_cache(ids)
        _, from_hooked = hooked.model.run_with_cache(ids)
    for name in from_hooked.keys():
        torch.testing.assert_close(from_hooked[name], from_bridge[name], atol=1e-5, rtol=1e-4, msg=name)


@needs_hooked
def test_weight_layout_changes_no_value_and_removes_every_copy(smollm2_tokenizer):
    hf = tiny_hf_model(smollm2_tokenizer)
    keep = backends.lay_out_weights_as_read
    backends.lay_out_weights_as_read = lambda model: None
    try:
        plain = from_hf_model(hf, smollm2_tokenizer, "tiny", backend=HOOKED)
    finally:
        backends.lay_out_weights_as_read = keep
    laid_out = from_hf_model(hf, smollm2_tokenizer, "tiny", backend=HOOKED)
    ids = torch.tensor([[5, 17, 300, 2, 9, 44]])
    with torch.inference_mode():
        assert torch.equal(plain.logits(ids), laid_out.logits(ids))
    weights = list(backends._weights_to_lay_out(laid_out.model))
    assert len(weights) == 2 * 7 + 1  # per layer: gate, in, out, Q, K, V, O; plus the unembedding
    for parameter, layout in weights:
        read = backends.LAYOUTS[layout][0](parameter)
        assert read.is_contiguous() and read.data_ptr() == parameter.data_ptr(), layout


@needs_hooked
def test_hooked_step_with_kv_cache_matches_full_forwards(smollm2_tokenizer):
    model = from_hf_model(tiny_hf_model(smollm2_tokenizer), smollm2_tokenizer, "tiny", backend=HOOKED)
    tokens = [1, 40, 41, 42, 43, 44, 45, 46]
    with torch.inference_mode():
        logits, past = model.step(torch.tensor([tokens[:4]]), None)
        for index in range(4, len(tokens)):
            full = model.logits(torch.tensor([tokens[:index]]))[0, -1]
            torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)
            logits, past = model.step(torch.tensor([[tokens[index]]]), past)


@needs_hooked
def test_hooked_to_tokens_does_not_double_the_chat_templates_bos(llama3_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    llama3_tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] }}<|eot_id|>{% endfor %}<|start_header_id|>assistant<|end_header_id|>\n\n")
    llama3_tokenizer.save_pretrained(tmp_path)  # TransformerLens reloads a tokenizer from its name_or_path
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    model = from_hf_model(tiny_hf_model(tokenizer), tokenizer, "tiny", backend=HOOKED)
    prompt = encode_prompt(tokenizer, build_prompt("What is 2 + 3?"))
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": prompt.text}], add_generation_prompt=True,
                                             tokenize=False)
    assert prompt.token_ids.count(tokenizer.bos_token_id) == 1
    assert model.model.to_tokens(rendered)[0].tolist() == list(prompt.token_ids)


@needs_hooked
@pytest.mark.parametrize("name", ["mistralai/Mistral-7B-Instruct-v0.3", "meta-llama/Meta-Llama-3.1-8B-Instruct"])
def test_hooked_runs_names_transformer_lens_3_does_not_list(smollm2_tokenizer, name):
    from transformer_lens.loading_from_pretrained import get_official_model_name

    with pytest.raises(ValueError, match="not found"):
        get_official_model_name(name)
    model = from_hf_model(tiny_hf_model(smollm2_tokenizer), smollm2_tokenizer, name, backend=HOOKED)
    assert model.info.name == name and model.info.backend == HOOKED


@needs_hooked
def test_hooked_loads_a_local_directory_whose_path_names_llama(smollm2_tokenizer, tmp_path):
    folder = tmp_path / "Meta-Llama-3.1-8B-Instruct-copy"
    tiny_hf_model(smollm2_tokenizer).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    model = load_model(str(folder), device="cpu", backend=HOOKED)
    assert model.info.source == "local_dir" and model.model.cfg.n_layers == 2


@needs_hooked
def test_hooked_refuses_4bit(tiny_dir):
    with pytest.raises(ModelLoadError, match="hooked backend cannot run 4-bit"):
        load_model(str(tiny_dir), device="cpu", backend=HOOKED, load_in_4bit=True)


@needs_hooked
def test_hooked_refuses_weights_stored_quantized(smollm2_tokenizer):
    hf = tiny_hf_model(smollm2_tokenizer)
    hf.config.quantization_config = {"quant_method": "awq", "bits": 4}
    with pytest.raises(BackendError, match="cannot run a awq-quantized model"):
        from_hf_model(hf, smollm2_tokenizer, "tiny", backend=HOOKED)


@needs_hooked
def test_embedded_gguf_loads_on_hooked_and_matches_hf(embedded):
    """The GGUF's dequantized weights pass TransformerLens' quantization check; the HF config is left intact."""
    from cot_patching.models.loading import load_hf_model, resolve_model

    hooked = embedded if embedded.info.backend == HOOKED else load_model(EMBEDDED, device="cpu", backend=HOOKED)
    hf = load_hf_model(resolve_model(EMBEDDED), torch.device("cpu"), torch.float32)
    ids = torch.tensor([encode_prompt(hooked.tokenizer, build_prompt("What is 2 + 3?")).token_ids])
    with torch.inference_mode():
        torch.testing.assert_close(hooked.logits(ids), hf(ids).logits, atol=5e-4, rtol=1e-4)


@needs_both
def test_embedded_greedy_traces_agree_between_backends(embedded):
    """Greedy decoding of the embedded model, on both backends, for the first sample problems."""
    models = {b: embedded if embedded.info.backend == b else load_model(EMBEDDED, device="cpu", backend=b)
              for b in backends.BACKENDS}
    problems = json.loads(Path("data/problems.sample.json").read_text("utf-8"))[:2]
    for problem in problems:
        prompt = encode_prompt(embedded.tokenizer, build_prompt(problem["question"])).token_ids
        traces = {b: sample(m, prompt, DecodeConfig(0.0, 0.95, 64), seed=0).token_ids
                  for b, m in models.items()}
        assert traces[BRIDGE] == traces[HOOKED], problem["id"]


@needs_both
def test_a_resumed_run_keeps_its_backend_and_refuses_another(tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from cot_patching.cli import app

    problems, results = tmp_path / "problems.json", tmp_path / "results"
    problems.write_text(json.dumps([{"id": f"p{i}", "question": f"What is {i} + 2?", "gold_answer": str(i + 2)}
                                    for i in range(2)]))
    mine = ["mine", "--no-progress", "--problems", str(problems), "--model", str(tiny_dir), "--outdir", str(results),
            "--max-tries", "1", "--max-new-tokens", "4"]
    first = CliRunner().invoke(app, [*mine, "--backend", BRIDGE])  # not the auto choice on TransformerLens 3.9
    assert first.exit_code == 0, first.output
    manifest = json.loads((results / "manifest.json").read_text())
    assert manifest["settings"]["backend"] == BRIDGE and manifest["model"]["backend"] == BRIDGE
    refused = CliRunner().invoke(app, [*mine, "--backend", HOOKED])
    assert refused.exit_code == 2
    assert "backend is 'bridge' there, 'hooked' now" in refused.output
    resumed = CliRunner().invoke(app, mine)  # auto: the run's own backend
    assert resumed.exit_code == 0, resumed.output
    sessions = json.loads((results / "manifest.json").read_text())["sessions"]
    assert [s["model"]["backend"] for s in sessions] == [BRIDGE, BRIDGE]


def test_cache_config_records_the_backend(tiny, tmp_path):
    results = tmp_path / "results"
    mine_scripted_pairs(tiny, results, n=1)
    out = tmp_path / "cache"
    cache_activations(tiny, results, out, CacheSettings(layers=(0,)), tiny.info.to_json(), progress=False)
    config: dict[str, Any] = json.loads((out / "cache_config.json").read_text())
    assert config["backend"] == tiny.info.backend
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert {entry["backend"] for entry in index} == {tiny.info.backend}
