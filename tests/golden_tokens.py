"""Golden greedy tokens: plain Hugging Face `generate` on the real models, stored so that drift shows.

The canaries (tests/integration/test_golden_tokens.py) compare three things on the mining prompts of
data/problems.first-pair.json: our decoders' greedy tokens, plain `generate` on a separately loaded plain Hugging Face
model today, and the tokens stored in tests/golden/greedy_tokens.json. Refresh the file only after a reviewed change
of versions (constraints.txt): `python tests/golden_tokens.py [--qwen models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf]`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_FILE = Path(__file__).parent / "golden" / "greedy_tokens.json"
PROBLEMS_FILE = ROOT / "data" / "problems.first-pair.json"
QWEN_GGUF = ROOT / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MAX_NEW_TOKENS = {"embedded": 48, "qwen2.5-coder-0.5b": 64}


def model_spec(key: str) -> str:
    """The `--model` value of a golden model key."""
    return {"embedded": "embedded", "qwen2.5-coder-0.5b": str(QWEN_GGUF)}[key]


def mining_prompts(tokenizer: Any) -> list[tuple[str, list[int]]]:
    """(problem id, prompt token ids) of the first-pair problems, as `mine` builds them."""
    from cot_patching.problems import load_problems
    from cot_patching.traces.prompt import build_prompt, encode_prompt

    return [(problem.id, encode_prompt(tokenizer, build_prompt(problem.question)).token_ids)
            for problem in load_problems(PROBLEMS_FILE)]


def plain_hf_model(spec: str) -> tuple[Any, Any]:
    """A plain Hugging Face model (no TransformerLens) and tokenizer of `spec`, fp32 on the CPU."""
    from cot_patching.models.loading import load_hf_model, load_tokenizer, resolve_model

    source = resolve_model(spec)
    return load_hf_model(source, torch.device("cpu"), torch.float32), load_tokenizer(source)


def plain_greedy(hf_model: Any, prompt_ids: list[int], max_new_tokens: int, stop_ids: frozenset[int]) -> list[int]:
    """Plain `generate` greedy tokens, stopping after any of `stop_ids` (which it keeps), as `mine` does."""
    with torch.inference_mode():
        out = hf_model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids),
                                dtype=torch.long), do_sample=False, max_new_tokens=max_new_tokens,
                                eos_token_id=sorted(stop_ids), pad_token_id=sorted(stop_ids)[0])
    return out[0, len(prompt_ids):].tolist()


def golden_entry(key: str) -> dict[str, Any]:
    """The golden record of one model: its identity, versions, prompts and plain-`generate` greedy tokens."""
    from cot_patching.models.loading import resolve_model, stop_token_ids
    from cot_patching.runs.files import file_sha256
    from cot_patching.runs.environment import installed_versions

    spec = model_spec(key)
    hf_model, tokenizer = plain_hf_model(spec)
    source = resolve_model(spec)
    stops = stop_token_ids(tokenizer, hf_model)
    prompts = [{"id": problem_id, "prompt_ids": ids,
                "token_ids": plain_greedy(hf_model, ids, MAX_NEW_TOKENS[key], stops)}
               for problem_id, ids in mining_prompts(tokenizer)]
    return {"model": key, "revision": "sha256:" + file_sha256(Path(str(source.path)) / str(source.gguf_file)),
            "dtype": "float32", "device": "cpu", "max_new_tokens": MAX_NEW_TOKENS[key],
            "made_with": installed_versions(), "prompts": prompts}


def load_golden() -> dict[str, Any]:
    """The stored goldens, by model key."""
    return {entry["model"]: entry for entry in json.loads(GOLDEN_FILE.read_text("utf-8"))}


def main() -> None:
    """Rewrite the golden file (atomically) from plain `generate` on the installed versions."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qwen", action="store_true", help=f"also the Qwen GGUF ({QWEN_GGUF.relative_to(ROOT)})")
    args = parser.parse_args()
    keys = ["embedded"] + (["qwen2.5-coder-0.5b"] if args.qwen else [])
    entries = [golden_entry(key) for key in keys]
    GOLDEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    temporary = GOLDEN_FILE.with_suffix(".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(entries, handle, indent=1)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, GOLDEN_FILE)
    for entry in entries:
        print(entry["model"], [len(p["token_ids"]) for p in entry["prompts"]], "tokens; made with", entry["made_with"])


if __name__ == "__main__":
    main()
