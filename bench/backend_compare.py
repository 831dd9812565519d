"""The bridge and hooked backends side by side on the embedded model, in ONE process (needs TransformerLens 3.9,
which ships both `TransformerBridge` and `HookedTransformer`):

  speed      the project's sampler on each backend (and the hooked one without the weight layout), T=0.7,
             top-p 0.95, EOS ignored, interleaved repeats; prints tok/s and the hooked/bridge time ratio
  agreement  greedy (T=0) traces of each sample problem on both backends; prints where they diverge and why

The bridge decodes through its Hugging Face model (as in production, on TransformerLens 4.x too); the hooked
backend through HookedTransformer's own forward and KV cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from bench.common import time_call
from cot_patching.decoding.replay import first_mismatch
from cot_patching.decoding.sampling import DecodeConfig, attempt_seed, sample
from cot_patching.models import backends
from cot_patching.models.loading import EMBEDDED, LoadedModel, load_model
from cot_patching.traces.prompt import build_prompt, encode_prompt

ROOT = Path(__file__).resolve().parent.parent


def load_both(device: str, dtype: str) -> dict[str, LoadedModel]:
    """The embedded model on each backend."""
    return {name: load_model(EMBEDDED, device=device, dtype=dtype, backend=name) for name in backends.BACKENDS}


def hooked_without_layout(device: str, dtype: str) -> LoadedModel:
    """The hooked backend with TransformerLens' own weight layout (each forward copies its weights)."""
    keep = backends.lay_out_weights_as_read
    backends.lay_out_weights_as_read = lambda model: None
    try:
        return load_model(EMBEDDED, device=device, dtype=dtype, backend=backends.HOOKED)
    finally:
        backends.lay_out_weights_as_read = keep


def run_speed(models: dict[str, LoadedModel], repeats: int, new_tokens: int) -> None:
    prompt = encode_prompt(models["bridge"].tokenizer, build_prompt(json.loads(
        (ROOT / "data/problems.sample.json").read_text())[0]["question"])).token_ids
    config = DecodeConfig(0.7, 0.95, new_tokens)
    rates: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(repeats + 1):  # round 0 warms up
        for name, model in models.items():
            no_eos = dataclasses.replace(model, stop_token_ids=frozenset())
            seconds, n_tokens = time_call(lambda: len(sample(no_eos, prompt, config, seed=round_index).token_ids))
            if round_index:
                rates[name].append(n_tokens / seconds)
    device = next(iter(models.values())).device
    print(f"speed: embedded SmolLM2-135M {next(iter(models.values())).info.dtype} on {device} ({torch.get_num_threads()} threads), prompt {len(prompt)} "
          f"tokens, {new_tokens} new tokens, {repeats} interleaved repeats, torch {torch.__version__}, "
          f"transformer-lens {backends.transformer_lens_version()}")
    bridge = statistics.median(rates["bridge"])
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:24s} {median:7.2f} tok/s (min {min(values):.2f}, max {max(values):.2f}); "
              f"time per token vs bridge {bridge / median:.2f}x")


@torch.inference_mode()
def top_two(model: LoadedModel, tokens: list[int]) -> tuple[list[int], float, torch.Tensor]:
    """The two most likely next tokens after `tokens`, their logit gap, and the logits (one full forward)."""
    logits = model.logits(torch.tensor([tokens], device=model.device))[0, -1].float()
    values, ids = torch.topk(logits, 2)
    return ids.tolist(), float(values[0] - values[1]), logits


def run_agreement(models: dict[str, LoadedModel], n_problems: int, new_tokens: int) -> None:
    problems = json.loads((ROOT / "data/problems.sample.json").read_text())[:n_problems]
    bridge, hooked = models["bridge"], models["hooked"]
    same = 0
    for problem in problems:
        prompt = encode_prompt(bridge.tokenizer, build_prompt(problem["question"])).token_ids
        config = DecodeConfig(0.0, 0.95, new_tokens)
        seed = attempt_seed(problem["id"], 0)
        a = sample(bridge, prompt, config, seed).token_ids
        b = sample(hooked, prompt, config, seed).token_ids
        first = first_mismatch(a, b)
        if first is None:
            same += 1
            print(f"  {problem['id']}: identical ({len(a)} tokens)")
            continue
        context = prompt + a[:first]
        ids_b, gap_b, logits_b = top_two(bridge, context)
        ids_h, gap_h, logits_h = top_two(hooked, context)
        decode = bridge.tokenizer.decode
        print(f"  {problem['id']}: diverge at token {first} of {len(a)}/{len(b)}: bridge {decode(a[first:first + 1])!r}"
              f" vs hooked {decode(b[first:first + 1])!r}; top-2 logit gap there: bridge {gap_b:.2e} "
              f"({[decode([i]) for i in ids_b]}), hooked {gap_h:.2e} ({[decode([i]) for i in ids_h]}); "
              f"max |logit diff| there {float((logits_b - logits_h).abs().max()):.2e}")
    print(f"agreement: {same}/{len(problems)} greedy traces identical "
          f"(max_new_tokens {new_tokens}, embedded SmolLM2-135M {bridge.info.dtype}, {bridge.device}; decode paths: "
          f"bridge {bridge.decode_path}, hooked {hooked.decode_path})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["speed", "agreement", "both"], default="both")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", help="fp32, bf16 or auto (the device's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--problems", type=int, default=20)
    args = parser.parse_args()
    if backends.available_backends() != backends.BACKENDS:
        sys.exit(f"needs both backends (TransformerLens 3.9); installed: {backends.available_backends()}")
    models: dict[str, Any] = load_both(args.device, args.dtype)
    if args.part in ("agreement", "both"):
        run_agreement(models, args.problems, args.new_tokens)
    if args.part in ("speed", "both"):
        models["hooked, TL weight layout"] = hooked_without_layout(args.device, args.dtype)
        run_speed(models, args.repeats, args.new_tokens)


if __name__ == "__main__":
    main()
