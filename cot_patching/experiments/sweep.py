"""Activation patching over every (direction, hook, layer, cell) of one pair: the metric and its patched values.

Definitions (docs/patching.md "Definitions"; `DEFINITIONS_VERSION` changes when one does):
- a pair is (C, I); g = the gold answer, w = I's normalized answer;
- metric(R) = sum log p(g's tokens) - sum log p(w's tokens), each answer written right after R's `Final Answer:`
  (the gap text kept), in R's context (prompt ids + R's tokens before the answer);
- denoise: recipient R = I, source S = C; noise: R = C, S = I;
- normalized = (patched - metric(R)) / (metric(S) - metric(R)).
- denoise_shuffled (the null control): R = I of a pair, S = C of the *next* pair in the study (cyclically), patched
  at the same aligned cells and normalized by the pair's own gap metric(C) - metric(I). A cell whose denoise effect
  is no larger than its shuffled effect shows nothing specific to the pair's own correct trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from cot_patching.activations.cache import HOOKS, hook_name
from cot_patching.experiments.alignment import ALIGNMENTS, Cell, ScoredTrace, cells_for, scored_trace
from cot_patching.experiments.patching import (
    ResidualPatch,
    padded_batch,
    rows_target_logprobs,
    run_rows_with_patches,
)
from cot_patching.models.loading import LoadedModel
from cot_patching.runs.pairing import LoadedPair

DEFINITIONS_VERSION = 1
DIRECTIONS = {"denoise": ("incorrect", "correct"), "noise": ("correct", "incorrect"),
              "denoise_shuffled": ("incorrect", "correct")}  # (recipient, source); shuffled: source of another pair
SHUFFLED = "denoise_shuffled"


@dataclass(frozen=True)
class SweepSettings:
    """What one patching study sweeps; checked before any model work."""

    layers: tuple[int, ...]
    hooks: tuple[str, ...] = ("resid_post",)
    alignments: tuple[str, ...] = ("step", "final_answer")
    directions: tuple[str, ...] = ("denoise", "noise")
    cells_per_forward: int = 1
    only_steps: dict[str, int | None] | None = None  # pair id -> the one step to patch (`--steps kstar`); None: all

    def __post_init__(self) -> None:
        checks = [("hook", self.hooks, HOOKS), ("alignment", self.alignments, ALIGNMENTS),
                  ("direction", self.directions, tuple(DIRECTIONS))]
        for what, chosen, allowed in checks:
            unknown = [item for item in chosen if item not in allowed]
            if unknown or not chosen:
                raise ValueError(f"unknown {what}(s) {unknown or list(chosen)}; choose from {', '.join(allowed)}")
        if not self.layers or any(not isinstance(layer, int) or layer < 0 for layer in self.layers):
            raise ValueError(f"layers must be non-negative layer indices, got {self.layers}")
        if not isinstance(self.cells_per_forward, int) or self.cells_per_forward < 1:
            raise ValueError(f"cells per forward must be a positive integer, got {self.cells_per_forward!r}")


@dataclass(frozen=True)
class PatchRow:
    """One cell's result: a row of results.csv."""

    pair_id: str
    direction: str
    hook: str
    layer: int
    alignment: str
    step_idx: int | None
    position: int
    n_positions: int
    metric_recipient: float
    metric_source: float
    metric_patched: float

    @property
    def normalized(self) -> float:
        """(patched - metric(R)) / (metric(S) - metric(R)); NaN when the two metrics are equal."""
        gap = self.metric_source - self.metric_recipient
        return (self.metric_patched - self.metric_recipient) / gap if gap != 0 else float("nan")


def metric_from_logprobs(gold: Float[Tensor, "n_gold"], wrong: Float[Tensor, "n_wrong"]) -> float:
    """sum log p(gold tokens) - sum log p(wrong tokens)."""
    return float(gold.sum().item() - wrong.sum().item())


def trace_metric(model: LoadedModel, trace: ScoredTrace) -> float:
    """metric(R) for a trace, from one forward over its two scoring rows."""
    logits = run_rows_with_patches(model, trace.rows())
    gold, wrong = rows_target_logprobs(logits, [len(trace.context)] * 2, trace.targets)
    return metric_from_logprobs(gold, wrong)


@torch.inference_mode()
def source_activations(
    model: LoadedModel, source: ScoredTrace, targets: tuple[list[int], list[int]], names: Sequence[str],
) -> dict[str, Float[Tensor, "row pos d_model"]]:
    """The source's activations at `names`, run on its own context + the given answer tokens (two rows)."""
    tokens = padded_batch(source.rows(targets)).to(model.device)
    wanted = set(names)
    _, cache = model.model.run_with_cache(tokens, names_filter=lambda name: name in wanted)
    return {name: cache[name].detach() for name in names}


def cell_patches(cell: Cell, layer: int, hook: str, acts: dict[str, Tensor]) -> list[list[ResidualPatch]]:
    """The patches of one cell at one (hook, layer), one list per scoring row."""
    values = acts[hook_name(layer, hook)]
    return [[ResidualPatch(layer, list(cell.recipient[row]), values[row, list(cell.source[row])], hook)]
            for row in range(2)]


def patched_metrics(
    model: LoadedModel, recipient: ScoredTrace, patch_sets: Sequence[list[list[ResidualPatch]]], cells_per_forward: int = 1,
) -> list[float]:
    """metric(R) with each patch set applied, `cells_per_forward` patch sets (2 rows each) per forward."""
    out: list[float] = []
    rows = recipient.rows()
    for start in range(0, len(patch_sets), cells_per_forward):
        chunk = patch_sets[start:start + cells_per_forward]
        logits = run_rows_with_patches(model, rows * len(chunk), [row for patches in chunk for row in patches])
        logprobs = rows_target_logprobs(logits, [len(recipient.context)] * (2 * len(chunk)),
                                        list(recipient.targets) * len(chunk))
        out.extend(metric_from_logprobs(logprobs[2 * i], logprobs[2 * i + 1]) for i in range(len(chunk)))
    return out


@dataclass(frozen=True)
class PairTraces:
    """Both traces of a pair, scored on the gold g and I's answer w."""

    pair: LoadedPair
    traces: dict[str, ScoredTrace]  # "correct", "incorrect"

    def direction(self, direction: str) -> tuple[ScoredTrace, ScoredTrace]:
        """(recipient, source) of a direction."""
        recipient, source = DIRECTIONS[direction]
        return self.traces[recipient], self.traces[source]


def pair_traces(model: LoadedModel, pair: LoadedPair) -> PairTraces:
    """Score both traces of a pair on g (the gold) and w (the incorrect trace's normalized answer)."""
    wrong = pair.incorrect.normalized_answer
    if wrong is None:
        raise ValueError(f"pair {pair.id}: the incorrect trace has no normalized answer")
    gold = pair.pair.gold_answer
    return PairTraces(pair, {name: scored_trace(model, pair.trace(name), gold, wrong)
                             for name in ("correct", "incorrect")})


@dataclass(frozen=True)
class DirectionResult:
    """One direction of one pair: a row per cell, the cells, and the source activations they took."""

    rows: list[PatchRow]
    cells: list[Cell]
    source_acts: dict[str, Tensor]


def sweep_direction(
    model: LoadedModel, traces: PairTraces, direction: str, settings: SweepSettings,
    metrics: dict[str, float] | None = None, donor: PairTraces | None = None,
) -> DirectionResult:
    """Every cell of one direction (alignments x cells x hooks x layers), with its patched metric (`donor`: the
    pair whose correct trace is the source of the shuffled control)."""
    recipient, source = traces.direction(direction)
    if direction == SHUFFLED:
        if donor is None or donor.pair.id == traces.pair.id:
            raise ValueError("the shuffled control needs another pair's correct trace (a study of >= 2 pairs)")
        source = donor.traces["correct"]
    metrics = metrics or {name: trace_metric(model, trace) for name, trace in traces.traces.items()}
    metric_r, metric_s = (metrics[name] for name in DIRECTIONS[direction])
    names = [hook_name(layer, hook) for hook in settings.hooks for layer in settings.layers]
    acts = source_activations(model, source, recipient.targets, names)
    cells = [cell for alignment in settings.alignments for cell in cells_for(alignment, recipient, source)]
    if settings.only_steps is not None:
        chosen = settings.only_steps.get(traces.pair.id)
        cells = [cell for cell in cells if cell.alignment != "step" or cell.step_idx == chosen]
    sites = [(cell, hook, layer) for cell in cells for hook in settings.hooks for layer in settings.layers]
    patched = patched_metrics(model, recipient, [cell_patches(cell, layer, hook, acts) for cell, hook, layer in sites],
                              settings.cells_per_forward)
    rows = [PatchRow(traces.pair.id, direction, hook, layer, cell.alignment, cell.step_idx, cell.position,
                     len(cell.recipient[0]), metric_r, metric_s, value)
            for (cell, hook, layer), value in zip(sites, patched)]
    return DirectionResult(rows, [cell for cell, _, _ in sites], acts)
