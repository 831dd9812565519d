"""Batched mining throughput: end-to-end `mine --batch-size N` against plain Hugging Face `generate` at the same N.

Ours is the whole mining loop (`cot_patching.mining.miner.mine`: grouping, prefill, decode, parsing, scoring, fsynced
writes), EOS ignored so that every attempt decodes exactly `--new-tokens`; the tokens counted are the attempts' new
tokens, the time is the `mine` call's wall clock. The peer is `generate` on the PLAIN Hugging Face model (no
TransformerLens wrappers) with the same N prompts left-padded, `min_new_tokens = max_new_tokens`, in its two
documented configurations: eager (dynamic cache) and a static cache, with which `generate` compiles the forward
itself. All rows come from ONE process on the same weights; each decoder is warmed up (compile, graph capture)
before it is timed.

Settings:
  cuda  a random-weight model of exactly Llama-3.1-8B's architecture, bf16, the real Llama-3 tokenizer
  cpu   the embedded SmolLM2-135M-Instruct, fp32 (a smoke run of the script, not a speed claim)

Run: python -m bench.batched_mining --setting cuda --llama3-tokenizer .whl/llama3_tokenizer.model
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import random_llama31_8b, random_llama31_8b_hf, synchronize
from cot_patching.mining.miner import mine
from cot_patching.mining.settings import MineSettings
from cot_patching.models.loading import EMBEDDED, LoadedModel, load_hf_model, load_model, resolve_model
from cot_patching.problems import Problem, load_problems
from cot_patching.runs import artifacts
from cot_patching.runs.records import read_runs
from cot_patching.traces.prompt import build_prompt, encode_prompt

PROBLEMS = Path(__file__).resolve().parent.parent / "data" / "problems.sample2.json"


def mine_rate(model: LoadedModel, problems: list[Problem], size: int, tries: int, new_tokens: int) -> float:
    """Tokens/s of one end-to-end `mine` call over `problems` at batch size `size`, `tries` attempts each."""
    settings = MineSettings(model=model.info.name, problems_sha256="bench", max_tries=tries,
                            max_new_tokens=new_tokens, batch_size=size)
    with tempfile.TemporaryDirectory() as outdir:
        synchronize()
        start = time.perf_counter()
        mine(problems, model, settings, outdir, min_pairs=10**9, progress=False)
        synchronize()
        seconds = time.perf_counter() - start
        runs = read_runs(Path(outdir) / artifacts.RUNS_FILE)
    n_tokens = sum(len(line.record.token_ids) for line in runs)
    assert n_tokens == len(problems) * tries * new_tokens, (n_tokens, len(problems), tries)
    return n_tokens / seconds


def generate_rate(hf: Any, tokenizer: Any, problems: list[Problem], new_tokens: int, static: bool) -> float:
    """Tokens/s of one plain `generate` call over the problems' prompts as one left-padded batch."""
    prompts = [encode_prompt(tokenizer, build_prompt(p.question)).token_ids for p in problems]
    width = max(len(p) for p in prompts)
    device = next(hf.parameters()).device
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    kwargs: dict[str, Any] = dict(do_sample=True, temperature=0.7, top_p=0.95, top_k=0, max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, pad_token_id=0)
    if static:
        kwargs["cache_implementation"] = "static"
    with torch.inference_mode():
        synchronize()
        start = time.perf_counter()
        out = hf.generate(ids, attention_mask=mask, **kwargs)
        synchronize()
        seconds = time.perf_counter() - start
    assert out.shape == (len(problems), width + new_tokens), out.shape
    return len(problems) * new_tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--sizes", default=None, help="batch sizes (default: 1,8,32,64 on cuda, 1,4,8 on cpu)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default: 256 on cuda, 32 on cpu")
    parser.add_argument("--llama3-tokenizer", type=Path, default=None, help="Llama-3 tokenizer.model (cuda)")
    parser.add_argument("--problems", type=Path, default=PROBLEMS)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    cuda = args.setting == "cuda"
    sizes = [int(s) for s in (args.sizes or ("1,8,32,64" if cuda else "1,4,8")).split(",")]
    new_tokens = args.new_tokens or (256 if cuda else 32)
    if cuda:
        if args.llama3_tokenizer is None:
            parser.error("--setting cuda needs --llama3-tokenizer")
        hf = random_llama31_8b_hf()  # the peer's model: plain HF, same seed, same weights as the bridged one
        model = random_llama31_8b(args.llama3_tokenizer)
    else:
        hf = load_hf_model(resolve_model(EMBEDDED), torch.device("cpu"), torch.float32)
        model = load_model(EMBEDDED, device="cpu")
    model = dataclasses.replace(model, stop_token_ids=frozenset())  # EOS ignored: every attempt decodes in full
    problems = load_problems(args.problems)
    rows: list[dict[str, Any]] = []
    for size in sizes:
        group = problems[:size]
        tries = max(2, 8 // size)
        mine_rate(model, group[:size], size, 1, new_tokens)  # warm-up: compile, capture
        ours = mine_rate(model, group, size, tries, new_tokens)
        model._graphed.clear()
        torch.cuda.empty_cache() if cuda else None
        peers = {}
        for name, static in (("eager", False), ("static", True)) if cuda else (("eager", False),):
            if static or size == sizes[0]:  # warm-up: the static path compiles per shape; eager needs none after
                generate_rate(hf, model.tokenizer, group, new_tokens, static)  # the first size's CUDA start-up
            peers[name] = generate_rate(hf, model.tokenizer, group, new_tokens, static)
        rows.append({"size": size, "ours": ours, "attempts": len(group) * tries, **peers})
        print(json.dumps(rows[-1]), flush=True)
    import transformers

    base = rows[0]["ours"] if rows[0]["size"] == 1 else None
    device = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"\ndevice: {device}; model: {model.info.name} ({model.info.dtype}); {new_tokens} new tokens per attempt, "
          f"EOS ignored; torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"{'N':>3s} {'ours: mine tok/s':>17s} {'HF eager':>10s} {'HF static+compile':>18s} {'vs our N=1':>11s} "
          f"{'vs HF eager':>12s} {'vs HF static':>13s}")
    for row in rows:
        static = row.get("static")
        cells = ["-" if static is None else f"{static:.1f}",
                 "-" if base is None else f"{row['ours'] / base:.2f}x",
                 f"{row['ours'] / row['eager']:.2f}x",
                 "-" if static is None else f"{row['ours'] / static:.2f}x"]
        print(f"{row['size']:3d} {row['ours']:17.1f} {row['eager']:10.1f} {cells[0]:>18s} {cells[1]:>11s} "
              f"{cells[2]:>12s} {cells[3]:>13s}")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "new_tokens": new_tokens, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
