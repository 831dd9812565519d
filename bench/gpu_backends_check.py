"""On CUDA, with TransformerLens 3.9 (both backends): the hooked backend beside the bridge on a random-weight model of
Llama-3.1-8B's architecture (bf16), built from one Hugging Face model.

Prints: hook names/shapes the two share, how far their activations and logits are apart, whether a sampled
attempt on the hooked backend decodes to the same tokens three times in one process (replayability), and the
sampler's decode speed on bridge (CUDA graph), bridge (eager) and hooked (eager).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.common import llama3_tokenizer, llama31_8b_config, time_call
from cot_patching.decoding.sampling import DecodeConfig, sample
from cot_patching.models import backends
from cot_patching.models.loading import LoadedModel, from_hf_model


def tokens_per_second(model: LoadedModel, prompt: list[int], new_tokens: int, repeats: int) -> list[float]:
    """Sampler tok/s over `repeats` attempts (after one warm-up), EOS ignored."""
    no_eos = dataclasses.replace(model, stop_token_ids=frozenset())
    config = DecodeConfig(0.7, 0.95, new_tokens)
    rates = []
    for seed in range(repeats + 1):
        seconds, n_tokens = time_call(lambda: len(sample(no_eos, prompt, config, seed).token_ids))
        if seed:
            rates.append(n_tokens / seconds)
    return rates


def main() -> None:
    from transformers import LlamaForCausalLM

    tokenizer_path = Path(sys.argv[1])
    new_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    print(f"device {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"transformer-lens {backends.transformer_lens_version()}, backends {backends.available_backends()}")
    torch.manual_seed(0)
    with torch.device("cuda"):
        hf = LlamaForCausalLM._from_config(llama31_8b_config(), dtype=torch.bfloat16)
    for parameter in hf.parameters():
        parameter.data.normal_(0.0, 0.02)
    tokenizer = llama3_tokenizer(tokenizer_path)
    start = time.perf_counter()
    hooked = from_hf_model(hf.eval(), tokenizer, "random-Llama-3.1-8B-architecture", backend="hooked")
    print(f"hooked backend built in {time.perf_counter() - start:.1f} s; "
          f"GPU memory allocated {torch.cuda.memory_allocated() / 2**30:.1f} GiB (HF model + HookedTransformer)")
    bridge = from_hf_model(hf, tokenizer, "random-Llama-3.1-8B-architecture", backend="bridge")

    ids = torch.randint(1000, 100000, (1, 96), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.inference_mode():
        _, cache_h = hooked.model.run_with_cache(ids)
        _, cache_b = bridge.model.run_with_cache(ids)
        logits_h, logits_b = hooked.logits(ids).float(), bridge.logits(ids).float()
    missing = [name for name in cache_h.keys() if name not in cache_b.keys()]
    mismatched = [name for name in cache_h.keys() if name in cache_b.keys()
                  and cache_h[name].shape != cache_b[name].shape]
    print(f"hooks: {len(cache_h.keys())} HookedTransformer hooks; missing from the bridge: {missing}; "
          f"shape mismatches: {mismatched}")
    last = f"blocks.{hooked.info.n_layers - 1}.hook_resid_post"
    print(f"max |diff| hooked vs bridge, bf16: {last} {float((cache_h[last] - cache_b[last]).abs().max()):.3e} "
          f"(max |value| {float(cache_b[last].abs().max()):.2f}); logits {float((logits_h - logits_b).abs().max()):.3e}"
          f"; argmax agrees at {int((logits_h.argmax(-1) == logits_b.argmax(-1)).sum())}/{ids.shape[1]} positions")

    prompt = ids[0].tolist()
    config = DecodeConfig(0.9, 0.95, 64)
    decodes = [sample(hooked, prompt, config, seed=1234).token_ids for _ in range(3)]
    print(f"hooked, sampled attempt decoded 3x in one process: identical {decodes[0] == decodes[1] == decodes[2]} "
          f"({len(decodes[0])} tokens, decode path {hooked.decode_path})")

    eager_bridge = dataclasses.replace(bridge, cuda_graphs=False, _graphed={})
    rates = {f"bridge ({bridge.decode_path})": tokens_per_second(bridge, prompt, new_tokens, 3),
             "bridge (eager)": tokens_per_second(eager_bridge, prompt, new_tokens, 3),
             "hooked (eager)": tokens_per_second(hooked, prompt, new_tokens, 3)}
    eager = statistics.median(rates["bridge (eager)"])
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:32s} {median:7.2f} tok/s (min {min(values):.2f}, max {max(values):.2f}); "
              f"time per token vs bridge eager {eager / median:.2f}x")


if __name__ == "__main__":
    main()
