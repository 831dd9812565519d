"""Where a batched mining step's time goes on the GPU, at several N, on the random-weight Llama-3.1-8B architecture.

For each N it times, per decode step: the forward replayed from its captured graph (uncompiled and compiled),
`choose_next_tokens` with every row sampled and with every row greedy, the log-prob gather, one whole
`sample_batch` on the default path (sampled and greedy). With --table, a torch.profiler table of one sampled
`sample_batch` at the largest N: the kernels that take the time.

Run: python -m bench.batched_profile --llama3-tokenizer .whl/llama3_tokenizer.model --sizes 1,8,32,64
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import torch

from bench.common import random_llama31_8b
from cot_patching.decoding.batched import BatchRow, RowSampling, cache_len_for, choose_next_tokens, sample_batch
from cot_patching.decoding.sampling import DecodeConfig


def per_call_ms(fn: Callable[[], object], repeats: int) -> float:
    """Milliseconds per call of `fn`, after one warm-up call, GPU synchronized around the timed calls."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / repeats


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama3-tokenizer", type=Path, required=True)
    parser.add_argument("--sizes", default="1,8,32,64")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--paths", default="plain_cuda_graph,plain_cuda_graph_compiled,grouped_cuda_graph,"
                                           "grouped_cuda_graph_compiled", help="decode paths whose step to time")
    parser.add_argument("--table", action="store_true", help="also print a torch.profiler table at the largest N")
    args = parser.parse_args()
    model = random_llama31_8b(args.llama3_tokenizer)
    width, new = 182, args.new_tokens
    cache_len = cache_len_for(width, 256)
    prompt = list(range(1000, 1150))
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; cache {cache_len}, width {width}")
    for size in (int(s) for s in args.sizes.split(",")):
        row: dict[str, float] = {}
        for path in args.paths.split(","):
            decoder = model.batched_decoder(size, cache_len, path=path)
            decoder.prefill([prompt] * size, width)
            tokens = torch.zeros(size, dtype=torch.long, device="cuda")
            decoder.step(tokens)
            row[path] = per_call_ms(lambda: decoder.step(tokens) if decoder.next_position < cache_len - 1 else None,
                                    repeats=40)
        decoder = model.batched_decoder(size, cache_len)
        logits = decoder.prefill([prompt] * size, width).clone()
        generators = [torch.Generator(device="cuda").manual_seed(r) for r in range(size)]
        sampled = RowSampling([0.9] * size, [0.95] * size, generators, torch.device("cuda"))
        greedy = RowSampling([0.0] * size, [1.0] * size, [None] * size, torch.device("cuda"))
        row["choose sampled"] = per_call_ms(lambda: choose_next_tokens(logits, sampled), 40)
        row["choose greedy"] = per_call_ms(lambda: choose_next_tokens(logits, greedy), 40)
        row["sort only"] = per_call_ms(lambda: torch.sort(logits.float(), dim=-1, descending=True, stable=True), 40)
        tokens = torch.zeros(size, dtype=torch.long, device="cuda")
        row["log-prob gather"] = per_call_ms(
            lambda: torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, None]), 40)
        for name, temperature in (("sample_batch sampled", 0.9), ("sample_batch greedy", 0.0)):
            rows = [BatchRow(prompt, DecodeConfig(temperature, 0.95, new), 7 + r) for r in range(size)]
            row[name] = per_call_ms(lambda: sample_batch(decoder, rows, frozenset(), width), 2) / new
        print(f"N={size:3d} " + "  ".join(f"{k}: {v:.3f} ms" for k, v in row.items()), flush=True)
        model._graphed.clear()
        torch.cuda.empty_cache()
    if not args.table:
        return
    decoder = model.batched_decoder(size, cache_len)
    rows = [BatchRow(prompt, DecodeConfig(0.9, 0.95, 32), 7 + r) for r in range(size)]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as profile:
        sample_batch(decoder, rows, frozenset(), width)
        torch.cuda.synchronize()
    print(f"\nprofile of one sampled sample_batch, N={size}, 32 new tokens:")
    print(profile.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
