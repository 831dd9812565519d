"""Decode speed at batch size 1: the project's sampler vs the peer a user would pick, plain Hugging Face `generate`.

The peer is `generate` on a PLAIN Hugging Face model (not the one the TransformerLens bridge wraps, whose modules
carry hook wrappers), in its two documented configurations: eager (dynamic cache) and its fastest documented path,
a static cache, with which `generate` compiles the forward itself (transformers 5 auto-compiles on CUDA when the
cache is static; compiling `forward` by hand on top of that breaks its CUDA graphs). Ratios are against each. `generate` on the bridged model and TransformerLens `generate` are extra rows, not peers.

Settings:
  cpu     the embedded SmolLM2-135M-Instruct, fp32, CPU
  cuda    a random-weight model of exactly Llama-3.1-8B's architecture, bf16, built on the GPU from its config
  mining  end-to-end mining throughput (attempts/min, tokens/s incl. parsing and writing) on the embedded model

All decoders run in ONE process on the same weights, interleaved over repeats, T=0.7, top-p 0.95, EOS ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from bench.common import random_llama31_8b, random_llama31_8b_hf, synchronize, time_call
from cot_patching.decoding.sampling import DecodeConfig, sample
from cot_patching.models.loading import LoadedModel, load_model
from cot_patching.traces.prompt import build_prompt, encode_prompt

QUESTION = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for "
            "her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh "
            "duck egg. How much in dollars does she make every day at the farmers' market?")


PLAIN_EAGER = "HF generate, plain model, eager"
PLAIN_COMPILED = "HF generate, plain model, static cache + torch.compile"


def decoders(model: LoadedModel, prompt_ids: list[int], new_tokens: int, plain_hf: Any | None,
             extras: bool, tl_generate_row: bool = False) -> dict[str, Callable[[], int]]:
    """The decoders, each returning how many new tokens it made (EOS ignored)."""
    no_eos = dataclasses.replace(model, stop_token_ids=frozenset())
    config = DecodeConfig(0.7, 0.95, new_tokens)
    input_ids = torch.tensor([prompt_ids], device=model.device)
    seeds = iter(range(10**6))
    sampling = dict(do_sample=True, temperature=0.7, top_p=0.95, top_k=0, max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens, pad_token_id=0)

    def project() -> int:
        return len(sample(no_eos, prompt_ids, config, seed=next(seeds)).token_ids)

    def hf_generate(hf: Any, **kwargs: Any) -> Callable[[], int]:
        @torch.inference_mode()
        def run() -> int:
            out = hf.generate(input_ids, **sampling, **kwargs)
            return out.shape[1] - input_ids.shape[1]
        return run

    @torch.inference_mode()
    def tl_generate() -> int:
        out = model.model.generate(input_ids, max_new_tokens=new_tokens, stop_at_eos=False, do_sample=True,
                                   temperature=0.7, top_p=0.95, use_past_kv_cache=True, verbose=False)
        return out.shape[1] - input_ids.shape[1]

    fns: dict[str, Callable[[], int]] = {"cot-patching sampler": project}
    if plain_hf is not None:
        fns[PLAIN_EAGER] = hf_generate(plain_hf)
        fns[PLAIN_COMPILED] = hf_generate(plain_hf, cache_implementation="static")
    if extras or plain_hf is None:
        fns["HF generate on the bridged model (extra)"] = hf_generate(model.model.original_model)
    if tl_generate_row or plain_hf is None:
        fns["TransformerLens generate (extra)"] = tl_generate
    return fns


def copy_bandwidth(n_bytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus written."""
    src = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    synchronize()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        dst.copy_(src)
        synchronize()
        times.append(time.perf_counter() - start)
    del src, dst
    return 2 * n_bytes / statistics.median(times)


def bytes_per_token(model: LoadedModel, context: int) -> int:
    """Weights read per decoded token (the input embedding reads one row) plus the KV cache at `context`."""
    hf = model.model.original_model
    embedding = hf.get_input_embeddings().weight
    weights = sum(p.numel() * p.element_size() for p in hf.parameters() if p is not embedding)
    cfg = hf.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * embedding.element_size() * context
    return weights + kv


def run_decode(model: LoadedModel, repeats: int, new_tokens: int, device_name: str, plain_hf: Any | None = None,
               extras: bool = True, tl_generate_row: bool = False) -> None:
    prompt = encode_prompt(model.tokenizer, build_prompt(QUESTION)).token_ids
    fns = decoders(model, prompt, new_tokens, plain_hf, extras, tl_generate_row)
    for fn in fns.values():  # warm-up (twice: compiles, captures CUDA graphs, allocates)
        fn()
        fn()
    results: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            seconds, n_tokens = time_call(fn)
            assert n_tokens == new_tokens, (name, n_tokens)
            results[name].append(n_tokens / seconds)
    import transformers

    peers = [name for name in (PLAIN_EAGER, PLAIN_COMPILED) if name in results] or list(results)[1:2]
    print(f"device: {device_name}; model: {model.info.name} ({model.info.dtype}); prompt {len(prompt)} tokens, "
          f"{new_tokens} new tokens, T=0.7 top-p 0.95, batch size 1, {repeats} interleaved repeats; "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    header = "".join(f" {'vs ' + str(i + 1):>7s}" for i in range(len(peers)))
    print(f"{'decoder':56s} {'tok/s (median)':>15s} {'min':>8s} {'max':>8s} {'ms/token':>9s}{header}")
    for name, rates in results.items():
        median = statistics.median(rates)
        ratios = "".join(f" {median / statistics.median(results[p]):6.2f}x" for p in peers)
        print(f"{name:56s} {median:15.2f} {min(rates):8.2f} {max(rates):8.2f} {1000 / median:9.2f}{ratios}")
    for i, peer in enumerate(peers):
        print(f"peer {i + 1}: {peer}")
    if plain_hf is not None:
        print(f"plain model's forward compiled by generate: {getattr(plain_hf, '_compiled_call', None) is not None}")
    if model.device.type == "cuda":
        bandwidth = copy_bandwidth()
        per_token = bytes_per_token(model, len(prompt) + new_tokens // 2)
        ideal_ms = 1000 * per_token / bandwidth
        print(f"bandwidth bound: {per_token / 1e9:.2f} GB read per token / {bandwidth / 1e12:.2f} TB/s copy "
              f"bandwidth = {ideal_ms:.2f} ms/token")
        for name, rates in results.items():
            print(f"{name:56s} reaches {100 * ideal_ms / (1000 / statistics.median(rates)):5.1f}% of the bound")


def run_mining(n_problems: int, max_tries: int, new_tokens: int) -> None:
    from cot_patching.mining.miner import mine
    from cot_patching.mining.settings import MineSettings
    from cot_patching.problems import deterministic_sample, read_gsm8k

    model = load_model("embedded", device="cpu")
    problems = deterministic_sample(read_gsm8k("test"), n_problems)
    settings = MineSettings(model="embedded", problems_sha256="bench", max_tries=max_tries, max_new_tokens=new_tokens)
    with tempfile.TemporaryDirectory() as outdir:
        start = time.perf_counter()
        result = mine(problems, model, settings, outdir, min_pairs=10**6, progress=False)
        seconds = time.perf_counter() - start
        from cot_patching.runs import artifacts
        from cot_patching.runs.records import read_runs

        runs = read_runs(Path(outdir) / artifacts.RUNS_FILE)
    tokens = sum(len(line.record.token_ids) for line in runs)
    print(f"mining (embedded SmolLM2-135M, CPU fp32, {torch.get_num_threads()} threads): {len(runs)} attempts, "
          f"{tokens} tokens in {seconds:.1f} s = {60 * len(runs) / seconds:.2f} attempts/min, "
          f"{tokens / seconds:.2f} tok/s end to end (pairs found: {result.summary['pairs_found']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=["cpu", "cuda", "mining"], required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--llama3-tokenizer", type=Path, default=None,
                        help="Llama-3 tokenizer.model (tiktoken) for the cuda setting; default: from llama-models")
    parser.add_argument("--extras", action="store_true",
                        help="also time HF generate on the bridged model (hook wrappers in its modules)")
    parser.add_argument("--tl-generate", action="store_true", help="also time TransformerLens generate")
    parser.add_argument("--problems", type=int, default=3, help="mining setting: problems")
    parser.add_argument("--max-tries", type=int, default=2, help="mining setting: attempts per problem")
    args = parser.parse_args()
    if args.setting == "mining":
        run_mining(args.problems, args.max_tries, args.new_tokens)
        return
    if args.setting == "cpu":
        from cot_patching.models.loading import EMBEDDED, load_hf_model, resolve_model

        plain = load_hf_model(resolve_model(EMBEDDED), torch.device("cpu"), torch.float32).eval()
        model = load_model("embedded", device="cpu")
        run_decode(model, args.repeats, args.new_tokens, f"CPU ({torch.get_num_threads()} threads)", plain_hf=plain,
                   extras=args.extras, tl_generate_row=args.tl_generate)
        return
    path = args.llama3_tokenizer
    if path is None:
        import importlib.util

        spec = importlib.util.find_spec("llama_models")
        path = Path(next(iter(spec.submodule_search_locations))) / "llama3" / "tokenizer.model"
    plain = random_llama31_8b_hf()  # the peer's model: plain HF, same seed, same weights as the bridged one
    model = random_llama31_8b(path)
    run_decode(model, args.repeats, args.new_tokens, torch.cuda.get_device_name(0), plain_hf=plain,
               extras=args.extras, tl_generate_row=args.tl_generate)


if __name__ == "__main__":
    main()
