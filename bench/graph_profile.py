"""CUDA: where a decode step's time goes: one graph replay of the bridged model vs of the plain HF model."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from bench.common import llama31_8b_config, random_llama31_8b
from cot_patching.decoding.cuda_graphs import GraphedDecoder
from cot_patching.decoding.sampling import choose_next_token


def replay_ms(decoder: GraphedDecoder, n: int = 50) -> float:
    logits = decoder.prefill(list(range(1000, 1150)))
    token = logits.argmax()
    decoder.step(token, 150)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(n):
        decoder.graph.replay()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / n


torch.set_grad_enabled(False)
bridged = random_llama31_8b(Path(sys.argv[1]))
print(f"attn implementation: {bridged.model.original_model.config._attn_implementation}")
print(f"bridged model, one graph replay: {replay_ms(GraphedDecoder(bridged.model.original_model, 512)):.2f} ms")
logits = torch.randn(128256, device="cuda", dtype=torch.bfloat16)
generator = torch.Generator(device="cuda").manual_seed(0)
torch.cuda.synchronize()
start = time.perf_counter()
for _ in range(50):
    choose_next_token(logits, 0.7, 0.95, generator)
torch.cuda.synchronize()
print(f"sampling (softmax, sort, cumsum, multinomial) over 128k: {1000 * (time.perf_counter() - start) / 50:.2f} ms")
del bridged
torch.cuda.empty_cache()
from transformers import LlamaForCausalLM

for attn in ("eager", "sdpa"):
    config = llama31_8b_config()
    config._attn_implementation = attn
    with torch.device("cuda"):
        plain = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16).eval()
    with torch.inference_mode():
        print(f"plain HF model ({attn}), one graph replay: {replay_ms(GraphedDecoder(plain, 512)):.2f} ms")
    del plain
    torch.cuda.empty_cache()
