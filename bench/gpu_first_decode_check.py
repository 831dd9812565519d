"""On CUDA: the first attempt a process decodes must give the same tokens, logits and RNG draws as later decodes
of the same attempt (random-weight Qwen2.5-0.5B architecture, fp32). Prints where they first differ."""

from __future__ import annotations

import sys
import types

import torch

import cot_patching.decoding.sampling as sampling
from cot_patching.decoding.replay import first_mismatch
from cot_patching.decoding.sampling import DecodeConfig, sample
from cot_patching.models.loading import LoadedModel, ModelInfo


def random_qwen05b(compile_step: bool, cuda_graphs: bool = True) -> LoadedModel:
    """Qwen2.5-0.5B's architecture with random weights on the GPU."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
    torch.manual_seed(0)
    hf_model = Qwen2ForCausalLM(config).to("cuda").eval()
    info = ModelInfo(name="random-qwen2.5-0.5b", source="random", path=None, revision=None, dtype="float32",
                     device="cuda", backend="hf", tokenizer_sha256="", n_layers=24, d_model=896)
    return LoadedModel(model=types.SimpleNamespace(original_model=hf_model), tokenizer=None, info=info,
                       stop_token_ids=frozenset(), cuda_graphs=cuda_graphs, compile_step=compile_step)


def traced_sample(model: LoadedModel, prompt: list[int], config: DecodeConfig, seed: int):
    """Tokens, plus per step the logits and the generator state just before each draw."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = sampling.choose_next_token

    def spy(logits, temperature, top_p, generator):
        seen.append((logits.detach().float().cpu().clone(), generator.get_state().clone()))
        return original(logits, temperature, top_p, generator)

    sampling.choose_next_token = spy
    try:
        tokens = sample(model, prompt, config, seed).token_ids
    finally:
        sampling.choose_next_token = original
    return tokens, seen


variant = sys.argv[1] if len(sys.argv) > 1 else "compiled"
model = random_qwen05b(compile_step=variant == "compiled", cuda_graphs=variant != "eager")
prompt = list(range(1000, 1200))
config = DecodeConfig(0.9, 0.95, 64)
runs = [traced_sample(model, prompt, config, seed=1234) for _ in range(3)]
for k in (1, 2):
    tokens_0, seen_0 = runs[0]
    tokens_k, seen_k = runs[k]
    logit_step = next((i for i, ((l0, _), (lk, _)) in enumerate(zip(seen_0, seen_k)) if not torch.equal(l0, lk)), None)
    state_step = next((i for i, ((_, g0), (_, gk)) in enumerate(zip(seen_0, seen_k)) if not torch.equal(g0, gk)), None)
    max_diff = max(float((l0 - lk).abs().max()) for (l0, _), (lk, _) in zip(seen_0, seen_k))
    print(f"{variant}: decode 1 vs decode {k + 1}: first token diff {first_mismatch(tokens_0, tokens_k)}, "
          f"first logits diff at step {logit_step} (max |diff| {max_diff:.3g}), first generator-state diff at step {state_step}")
t12 = first_mismatch(runs[1][0], runs[2][0])
print(f"{variant}: decode 2 vs decode 3: first token diff {t12}")
