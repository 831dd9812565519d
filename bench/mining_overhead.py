"""Mining bookkeeping per attempt, without a model: does it stay flat as the run grows?

A stub decoder returns a fixed trace per attempt (no forward passes), so what is timed is everything mining does
around decoding: parse, score, spans, the fsynced append to runs.jsonl, pairs and summary kept up to date. Each
problem takes four attempts (unparsed, wrong, unparsed, correct: a pair at the fourth). Prints seconds per attempt
at each size, then `per-attempt overhead ratio (LARGE/SMALL): X` (1.0 = flat; O(N^2) bookkeeping grows with N).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from types import SimpleNamespace
from typing import Any

from cot_patching.decoding.sampling import Generation, attempt_seed
from cot_patching.mining.miner import mine
from cot_patching.mining.settings import MineSettings
from cot_patching.problems import Problem

TRACES = [
    "I think the answer is probably seven or so.",
    "Step 1: Tom has 3 apples.\nStep 2: 3 * 4 = 12 apples.\nFinal Answer: 12",
    "Let me think about it.",
    "Step 1: Tom has 3 apples.\nStep 2: He buys 4 more, 3 + 4 = 7.\nFinal Answer: 7",
]


def stub_sampler(tokenizer: Any, problems: list[Problem]) -> Any:
    """Attempt k of every problem decodes to TRACES[k % 4]."""
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in TRACES]
    attempt_of = {attempt_seed(p.id, k): k for p in problems for k in range(4)}

    def sample(model: Any, prompt_ids: Any, config: Any, seed: int) -> Generation:
        tokens = ids[attempt_of[seed] % 4]
        return Generation(list(tokens), "stop", [-0.1] * len(tokens))

    return sample


def seconds_per_attempt(tokenizer: Any, n_attempts: int) -> float:
    problems = [Problem(f"b{i:06d}", f"Tom has 3 apples and buys 4 more ({i}). How many?", "7")
                for i in range(n_attempts // 4)]
    model = SimpleNamespace(tokenizer=tokenizer, info=None)
    settings = MineSettings(model="stub", problems_sha256="bench")
    with tempfile.TemporaryDirectory() as outdir:
        start = time.perf_counter()
        result = mine(problems, model, settings, outdir, min_pairs=10**9, progress=False,
                      sampler=stub_sampler(tokenizer, problems))
        seconds = time.perf_counter() - start
    assert result.attempts_this_call == 4 * len(problems) and result.summary["pairs_found"] == len(problems)
    return seconds / result.attempts_this_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,20000", help="two attempt counts, small,large")
    args = parser.parse_args()
    small, large = (int(x) for x in args.sizes.split(","))
    from transformers import AutoTokenizer

    from cot_patching.models.loading import EMBEDDED_FILE, embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir(), gguf_file=EMBEDDED_FILE)
    per = {}
    for n in (small, large):
        per[n] = seconds_per_attempt(tokenizer, n)
        print(f"{n} attempts: {1000 * per[n]:.3f} ms per attempt", flush=True)
    print(f"per-attempt overhead ratio ({_count(large)}/{_count(small)}): {per[large] / per[small]:.2f}")


def _count(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


if __name__ == "__main__":
    main()
