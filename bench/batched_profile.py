"""Where a batched decode step's time goes on the GPU: the graph-replayed forward, sampling, its parts."""

from __future__ import annotations

import sys
import time

import torch

from cot_patching.decoding.batched import BatchRow, RowSampling, cache_len_for, choose_next_tokens, sample_batch
from cot_patching.decoding.sampling import DecodeConfig
from cot_patching.models import load_model


def timed(label: str, fn, repeats: int = 50) -> None:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    print(f"{label:50s} {1000 * (time.perf_counter() - start) / repeats:8.3f} ms", flush=True)


@torch.inference_mode()
def main() -> None:
    model = load_model(sys.argv[1], device="cuda", dtype=sys.argv[2] if len(sys.argv) > 2 else "fp32")
    size = 32
    cache_len = cache_len_for(182, 256)
    dec = model.batched_decoder(size, cache_len)
    prompt = list(range(1000, 1150))
    config = DecodeConfig(0.9, 0.95, 64)
    rows = [BatchRow(prompt, config, 7 + r) for r in range(size)]
    timed("sample_batch, 32 rows x 64 tokens (per token step)", lambda: sample_batch(dec, rows, frozenset(), 182),
          repeats=3)
    logits = dec.prefill([prompt] * size, 182)
    tokens = torch.zeros(size, dtype=torch.long, device="cuda")
    dec.step(tokens)
    timed("decoder.step (graph replay)", lambda: dec.step(tokens) if dec.next_position < cache_len - 1 else None)
    gens = [torch.Generator(device="cuda").manual_seed(r) for r in range(size)]
    sampling = RowSampling([0.9] * size, [0.95] * size, gens, torch.device("cuda"))
    one = RowSampling([0.9] + [0.0] * (size - 1), [0.95] * size, gens[:1] + [None] * (size - 1),
                      torch.device("cuda"))
    timed("choose_next_tokens, 32 sampled rows", lambda: choose_next_tokens(logits, sampling))
    timed("choose_next_tokens, 1 sampled row", lambda: choose_next_tokens(logits, one))
    timed("sort [32, vocab] fp32 stable", lambda: torch.sort(logits.float(), dim=-1, descending=True, stable=True))
    timed("sort [1, vocab] fp32 stable", lambda: torch.sort(logits[:1].float(), dim=-1, descending=True, stable=True))
    timed("log_softmax [32, vocab]", lambda: torch.log_softmax(logits.float(), dim=-1))


if __name__ == "__main__":
    main()
