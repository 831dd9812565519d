"""cot-patching: mine correct/incorrect chain-of-thought pairs on TransformerLens models for patching.

Public names, by part (lowest first): traces (prompt, parsing, scoring, spans), problems, runs (records, the run
directory), decoding (sampling), models (loading), mining (settings), activations.
"""

from __future__ import annotations

from cot_patching.traces.prompt import PROMPT_TEMPLATE, build_prompt, encode_prompt
from cot_patching.traces.parsing import ParsedTrace, Step, parse_trace, select_steps
from cot_patching.traces.scoring import Score, score_answer
from cot_patching.traces.spans import TokenOffsets, decode_tokens, token_spans
from cot_patching.problems import Problem, load_problems
from cot_patching.runs.records import PairRecord, RunRecord, read_pairs, read_run_at, read_runs
from cot_patching.runs.pairing import LoadedPair
from cot_patching.runs.directory import RunDirectory, load_pairs
from cot_patching.runs.manifest import ModelIdentity, RunManifest, Session
from cot_patching.decoding.sampling import DecodeConfig, Generation, attempt_seed, sample, temperature_schedule
from cot_patching.models.loading import LoadedModel, load_model
from cot_patching.mining.settings import MineOptions, MineSettings
from cot_patching.activations.cache import ActivationStore, CacheSettings, load_activations

__version__ = "0.1.0"

__all__ = [
    "PROMPT_TEMPLATE", "build_prompt", "encode_prompt",
    "ParsedTrace", "Step", "parse_trace", "select_steps",
    "Score", "score_answer",
    "TokenOffsets", "decode_tokens", "token_spans",
    "Problem", "load_problems",
    "LoadedPair", "PairRecord", "RunRecord", "read_pairs", "read_run_at", "read_runs",
    "RunDirectory", "load_pairs",
    "ModelIdentity", "RunManifest", "Session",
    "DecodeConfig", "Generation", "attempt_seed", "sample", "temperature_schedule",
    "LoadedModel", "load_model",
    "MineOptions", "MineSettings",
    "ActivationStore", "CacheSettings", "load_activations",
]
