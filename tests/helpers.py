"""Test helpers: a scripted sampler that makes mining outcomes chosen by the test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cot_patching.decoding.sampling import Generation, attempt_seed
from cot_patching.mining.miner import mine
from cot_patching.mining.settings import MineSettings
from cot_patching.problems import Problem

CORRECT = "Step 1: 2 + 3 = 5\nFinal Answer: 5"
WRONG = "Step 1: 2 + 3 = 6\nFinal Answer: 6"
UNPARSED = "I think it is 7."


class ScriptedSampler:
    """Returns, for each (problem, attempt), the tokens of a given text; records every call."""

    def __init__(self, tokenizer: Any, scripts: dict[str, list[str]], fail_after: int | None = None):
        self.tokenizer = tokenizer
        self.by_seed = {attempt_seed(pid, k): text for pid, texts in scripts.items() for k, text in enumerate(texts)}
        self.calls: list[tuple[int, float]] = []
        self.fail_after = fail_after

    def __call__(self, model: Any, prompt_ids: Any, config: Any, seed: int) -> Generation:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append((seed, config.temperature))
        ids = self.tokenizer(self.by_seed[seed], add_special_tokens=False)["input_ids"]
        return Generation(ids + [self.tokenizer.eos_token_id], "stop", [0.0] * (len(ids) + 1))


MULTI_STEP_CORRECT = ("Step 1: Let us read the problem step-by-step.\nStep 2: He buys 4 more, 3 + 4 = 7.\n"
                      "Step 3: So he has 7 apples.\nFinal Answer: 7")
MULTI_STEP_WRONG = ("**Step 1:** Tom has 3 apples.\n**Step 2:** 3 * 4 = 12 apples.\n"
                    "**Step 3:** He has 12.\n**Final Answer:** 12")


def mine_scripted_pairs(model: Any, outdir: Path, n: int = 2) -> list[Problem]:
    """Mine `n` problems whose attempts are a wrong then a correct multi-step trace (one pair each)."""
    problems = [Problem(f"q{i}", f"Tom has 3 apples and buys 4 more ({i}). How many?", "7") for i in range(n)]
    scripts = {p.id: [MULTI_STEP_WRONG, MULTI_STEP_CORRECT] for p in problems}
    settings = MineSettings(model=model.info.name, problems_sha256="x")
    mine(problems, model, settings, outdir, manifest={"model": model.info.to_json()}, progress=False,
         sampler=ScriptedSampler(model.tokenizer, scripts))
    return problems
