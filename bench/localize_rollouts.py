"""Rollouts from one shared prefix: our forked prefill vs re-prefilling every rollout vs Hugging Face `generate`.

Peers, at the same batch (R rollouts of one prefix, top-p sampling, the same new-token budget, same model object):
- ours, forked: `sample_batch(..., fork_from=one-slot decoder)`: the prefix prefilled once, its KV cache copied into
  the R slots, then the exact batched decoder (what `localize` runs);
- ours, re-prefilled: the same decoder prefilling the prefix in every slot (R x the prefill work);
- Hugging Face `generate(prefix, do_sample=True, num_return_sequences=R)` on the plain HF model: eager (dynamic
  cache), and with `cache_implementation="static"` + `torch.compile` (its documented fast configuration).
Rollout counts and new tokens are what each path actually produced (HF stops a row at end of turn, like ours).

    python -m bench.localize_rollouts --model models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --dtype bf16 \
        --rollouts 100 --prefix-tokens 300 --new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.common import synchronize
from cot_patching.decoding.batched import BatchRow, sample_batch
from cot_patching.decoding.sampling import DecodeConfig
from cot_patching.models.loading import load_model
from cot_patching.traces.prompt import build_prompt, encode_prompt

QUESTION = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
            "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck "
            "egg. How much in dollars does she make every day at the farmers' market?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rollouts", type=int, default=100)
    parser.add_argument("--prefix-tokens", type=int, default=300, help="prompt + this many greedy trace tokens")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the HF static cache + torch.compile peer")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    prompt = encode_prompt(model.tokenizer, build_prompt(QUESTION)).token_ids
    hf = model.plain_model("plain")
    with torch.inference_mode():
        greedy = hf.generate(torch.tensor([prompt], device=model.device), max_new_tokens=args.prefix_tokens,
                             do_sample=False, min_new_tokens=args.prefix_tokens)[0].tolist()
    prefix = greedy[: len(prompt) + args.prefix_tokens]
    config = DecodeConfig(0.7, 0.95, args.new_tokens)
    cache_len = -(-(len(prefix) + args.new_tokens) // 256) * 256
    decoder = model.batched_decoder(args.rollouts, cache_len)
    single = model.batched_decoder(1, cache_len, decoder.path)
    rows = [BatchRow(prefix, config, 1000 + r) for r in range(args.rollouts)]
    results: dict[str, dict[str, float]] = {}

    def measure(name: str, run) -> None:
        run()  # warm-up (graph capture, compile)
        times, tokens = [], 0
        for _ in range(args.repeats):
            synchronize()
            start = time.perf_counter()
            tokens = run()
            synchronize()
            times.append(time.perf_counter() - start)
        best = min(times)
        results[name] = {"seconds": round(best, 4), "new_tokens": tokens, "tok_per_s": round(tokens / best, 1),
                         "rollouts_per_s": round(args.rollouts / best, 2)}
        print(f"{name:34s} {best:8.3f} s  {tokens:7d} new tokens  {tokens / best:9.1f} tok/s  "
              f"{args.rollouts / best:7.2f} rollouts/s", flush=True)

    def ours(fork: bool) -> int:
        generations = sample_batch(decoder, rows, model.stop_token_ids, width=len(prefix),
                                   fork_from=single if fork else None)
        return sum(len(g.token_ids) for g in generations if g is not None)

    def hf_generate(static: bool) -> int:
        kwargs = {"cache_implementation": "static"} if static else {}
        torch.manual_seed(0)
        ids = torch.tensor([prefix], device=model.device)
        with torch.inference_mode():
            out = hf.generate(ids, do_sample=True, temperature=0.7, top_p=0.95, top_k=0,
                              num_return_sequences=args.rollouts, max_new_tokens=args.new_tokens,
                              eos_token_id=sorted(model.stop_token_ids), pad_token_id=sorted(model.stop_token_ids)[0],
                              **kwargs)
        new = out[:, len(prefix):]
        stops = torch.isin(new, torch.tensor(sorted(model.stop_token_ids), device=new.device))
        lengths = torch.where(stops.any(1), stops.float().argmax(1) + 1, torch.full_like(stops[:, 0], new.shape[1],
                                                                                         dtype=torch.long))
        return int(lengths.sum())

    print(f"{args.model} {args.dtype}: prefix {len(prefix)} tokens, {args.rollouts} rollouts, <= {args.new_tokens} "
          f"new tokens each, decode path {decoder.path}, {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}")
    measure("ours, forked prefill", lambda: ours(True))
    measure("ours, prefix re-prefilled per slot", lambda: ours(False))
    measure("HF generate, eager (dynamic cache)", lambda: hf_generate(False))
    if not args.no_compile:  # a static cache makes `generate` compile the forward itself (compiling it again breaks
        measure("HF generate, static cache + compile", lambda: hf_generate(True))  # its CUDA graphs)
    base = results["ours, forked prefill"]["tok_per_s"]
    for name, entry in results.items():
        print(f"ratio ours-forked / {name}: {base / entry['tok_per_s']:.2f}x tok/s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
