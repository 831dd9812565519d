"""CUDA, bf16: mine scripted pairs on a random 4-layer model of Llama-3.1-8B's width, cache activations, and check
them against a fresh run_with_cache; patching a trace with its own activations must leave its logits unchanged."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers import mine_scripted_pairs
from transformers import LlamaForCausalLM

from bench.common import llama3_tokenizer, llama31_8b_config
from cot_patching.activations.cache import CacheSettings, cache_activations, hook_name, load_activations
from cot_patching.experiments.patching import ResidualPatch, run_with_patches
from cot_patching.models.loading import from_hf_model
from cot_patching.runs.directory import load_pairs

config = llama31_8b_config()
config.num_hidden_layers = 4
torch.manual_seed(0)
with torch.device("cuda"):
    hf = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16).eval()
model = from_hf_model(hf, llama3_tokenizer(Path(sys.argv[1])), name="random-4-layer-Llama-3.1-width")
root = Path(tempfile.mkdtemp())
mine_scripted_pairs(model, root / "results", n=2)
settings = CacheSettings(layers=(0, 3), hooks=("resid_pre", "resid_post"), steps="early,late", dtype="bf16")
cache_activations(model, root / "results", root / "acts", settings, model.info.to_json(), progress=False)
store = load_activations(root / "acts")
pairs = {p.id: p for p in load_pairs(root / "results")}
worst = 0.0
for key in store:
    entry = store.entry(key)
    record = pairs[key.pair_id].trace(key.trace)
    tokens = torch.tensor([record.prompt_token_ids + record.token_ids], device="cuda")
    name = hook_name(key.layer, key.hook)
    with torch.inference_mode():
        _, cache = model.model.run_with_cache(tokens, names_filter=lambda n: n == name)
    cached = store[key]
    assert cached.dtype == torch.bfloat16
    worst = max(worst, float((cached.float() - cache[name][0, entry.positions].float().cpu()).abs().max()))
print(f"{len(store)} cached tensors (bf16) vs fresh run_with_cache: max abs difference {worst}")
assert worst == 0.0
pair = next(iter(pairs.values()))
tokens = pair.correct.prompt_token_ids + pair.correct.token_ids
patches = [ResidualPatch(layer, store.entry((pair.id, "correct", step, "resid_post", layer)).positions,
                         store[(pair.id, "correct", step, "resid_post", layer)]) for step in ("early", "late")
           for layer in (0, 3)]
difference = float((run_with_patches(model, tokens, patches) - run_with_patches(model, tokens)).abs().max())
print(f"self-patch logit difference: {difference}")
assert difference == 0.0
print(torch.cuda.get_device_name(0), "OK")
