"""cot-patching: mine correct/incorrect chain-of-thought pairs on TransformerLens models for patching."""

from __future__ import annotations

from cot_patching.activations.cache import ActivationStore, CacheSettings, load_activations
from cot_patching.runs.artifacts import LoadedPair, PairRecord, RunRecord, read_pairs, read_run_at, read_runs
from cot_patching.runs.directory import load_pairs
from cot_patching.models.loading import LoadedModel, load_model
from cot_patching.traces.parsing import ParsedTrace, Step, parse_trace, select_steps
from cot_patching.problems import Problem, load_problems
from cot_patching.traces.prompt import PROMPT_TEMPLATE, build_prompt, encode_prompt
from cot_patching.decoding.sampling import DecodeConfig, Generation, attempt_seed, sample, temperature_schedule
from cot_patching.traces.scoring import Score, score_answer
from cot_patching.traces.spans import decode_tokens, token_spans

__version__ = "0.1.0"

__all__ = [
    "ActivationStore", "CacheSettings", "LoadedPair", "load_activations", "load_pairs",
    "PROMPT_TEMPLATE", "DecodeConfig", "Generation", "LoadedModel", "PairRecord", "ParsedTrace",
    "Problem", "RunRecord", "Score", "Step", "attempt_seed", "build_prompt", "decode_tokens",
    "encode_prompt", "load_model", "load_problems", "parse_trace", "read_pairs", "read_run_at",
    "read_runs", "sample", "score_answer", "select_steps", "temperature_schedule", "token_spans",
]
