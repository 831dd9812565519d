"""Time a full patching sweep (every layer, step + final_answer alignments, both directions, attribution) on one
synthetic pair: two written traces of about 250 tokens each, spans from the project's own parser.

    python -m bench.patching_speed --setting cpu                       # embedded SmolLM2-135M, fp32
    python -m bench.patching_speed --setting cuda --llama3-tokenizer PATH/tokenizer.model   # random Llama-3.1-8B, bf16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from cot_patching.activations.cache import hook_name
from cot_patching.experiments.attribution import recipient_gradients
from cot_patching.experiments.sweep import SweepSettings, pair_traces, sweep_direction, trace_metric
from cot_patching.runs.pairing import LoadedPair
from cot_patching.runs.records import PairRecord, RunRecord
from cot_patching.traces.analysis import analyze_trace
from cot_patching.traces.prompt import build_prompt, encode_prompt

QUESTION = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for "
            "her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh "
            "duck egg. How much in dollars does she make every day at the farmers' market?")
CORRECT = ("Step 1: Janet's ducks lay 16 eggs per day, and this is the number we start from before anything is used "
           "for breakfast, for baking or for selling at the market.\n"
           "Step 2: She eats 3 eggs for breakfast every morning, so after breakfast she has 16 - 3 = 13 eggs left "
           "for the rest of the day.\n"
           "Step 3: She bakes muffins for her friends with 4 eggs every day, so after baking she has 13 - 4 = 9 eggs "
           "left to sell at the farmers' market.\n"
           "Step 4: She sells each of the remaining 9 eggs for $2 at the market, so every day she makes "
           "9 * 2 = 18 dollars from the eggs she sells.\nFinal Answer: 18")
WRONG = ("Step 1: Janet's ducks lay 16 eggs every single day, which is the total she has to work with before she "
         "eats any or bakes with any of them.\n"
         "Step 2: She eats 3 eggs for breakfast and then bakes muffins with 4 eggs, so she uses 3 + 4 = 7 eggs "
         "each day in total at home.\n"
         "Step 3: The eggs left for the market are 16 - 7 = 8 eggs, which she takes to the farmers' market every "
         "day to sell to her customers.\n"
         "Step 4: At $2 per egg, her daily income from the market is 8 * 2 = 16 dollars from the eggs that she "
         "sells there.\nFinal Answer: 16")


def synthetic_pair(tokenizer: Any) -> LoadedPair:
    """A (correct, incorrect) pair of written traces of the same prompt, analyzed by the mining code."""
    prompt = build_prompt(QUESTION)
    prompt_ids = encode_prompt(tokenizer, prompt).token_ids
    records = []
    for attempt, text in enumerate((WRONG, CORRECT)):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        fields = analyze_trace(tokenizer, ids, "18").record_fields()
        records.append(RunRecord(id="synthetic", attempt=attempt, temperature=0.7, top_p=0.95, seed=attempt,
                                 model="bench", prompt=prompt, prompt_token_ids=list(prompt_ids), token_ids=ids,
                                 max_new_tokens=256, finish_reason="stop", gold_answer="18", **fields))
    wrong, correct = records
    assert correct.correct and not wrong.correct and wrong.parse_ok
    pair = PairRecord(id="synthetic", problem=QUESTION, gold_answer="18", correct_ref={"attempt": 1, "runs_offset": 0},
                      incorrect_ref={"attempt": 0, "runs_offset": 0},
                      steps_selected={"early": {"step_idx": 1}, "late": {"step_idx": 4}}, decode_config={},
                      n_attempts=2)
    return LoadedPair(pair, correct, wrong)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_sweep(model: Any, pair: LoadedPair, cells_per_forward: int) -> dict[str, float]:
    """Seconds for the activation-patching sweep and for attribution, all layers, both directions."""
    settings = SweepSettings(layers=tuple(range(model.info.n_layers)), alignments=("step", "final_answer"),
                             cells_per_forward=cells_per_forward)
    synchronize()
    start = time.perf_counter()
    traces = pair_traces(model, pair)
    metrics = {name: trace_metric(model, trace) for name, trace in traces.traces.items()}
    cells = 0
    for direction in settings.directions:
        cells += len(sweep_direction(model, traces, direction, settings, metrics).rows)
    synchronize()
    sweep = time.perf_counter() - start
    start = time.perf_counter()
    names = [hook_name(layer, "resid_post") for layer in settings.layers]
    for direction in settings.directions:
        recipient_gradients(model, traces.direction(direction)[0], names)
    synchronize()
    return {"cells": cells, "sweep_s": sweep, "attribution_s": time.perf_counter() - start,
            "tokens": len(traces.traces["correct"].context), "tokens_incorrect": len(traces.traces["incorrect"].context)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=["cpu", "cuda"], required=True)
    parser.add_argument("--llama3-tokenizer", type=Path, default=None)
    parser.add_argument("--batches", default="1,8", help="cells per forward to time, comma-separated")
    args = parser.parse_args()
    if args.setting == "cuda":
        from bench.common import random_llama31_8b

        model = random_llama31_8b(args.llama3_tokenizer)
    else:
        from cot_patching.models.loading import EMBEDDED, load_model

        model = load_model(EMBEDDED, device="cpu")
    pair = synthetic_pair(model.tokenizer)
    device = torch.cuda.get_device_name(0) if args.setting == "cuda" else "CPU"
    print(f"device: {device}; model: {model.info.name} ({model.info.dtype}), {model.info.n_layers} layers; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for batch in (int(b) for b in args.batches.split(",")):
        figures = time_sweep(model, pair, batch)
        print(f"cells per forward {batch:3d}: {figures['cells']} cells (context {figures['tokens']} / "
              f"{figures['tokens_incorrect']} tokens), sweep {figures['sweep_s']:.2f} s "
              f"({figures['cells'] / figures['sweep_s']:.1f} cells/s), attribution (2 forward+backward) "
              f"{figures['attribution_s']:.2f} s")


if __name__ == "__main__":
    main()
