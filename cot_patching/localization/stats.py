"""What the rollouts say: P(correct | prefix) with Wilson intervals, resampling importance, k*, forking tokens.

Definitions (docs/localization.md has them with their sources):

- p_k: the fraction of rollouts continued from a trace's exact tokens through step k (k = 0: the prompt alone)
  whose final answer is scored correct, with the same parser and scorer as mining (strict protocol labels:
  an unparsed rollout is not correct).
- resampling importance of step k: p_k - p_{k-1} (Thought Anchors' acc(from i+1) - acc(from i)).
- k*: the step of the incorrect trace with the most negative importance (the largest drop); ties go to the
  earliest step; none when p_k never falls. A drop is `separated` when the two Wilson intervals do not overlap.
- forking tokens inside k*: at each token index i of step k*, every alternative token with p > threshold under
  the model's untempered next-token distribution, continued N times from trace[:i] + [token]. o_i, the expected
  outcome at i, is the probability-weighted mean of the alternatives' correct rates; the fork score
  o_i - acc(actual token) is how far the token the trace actually took lowered P(correct) below what the model's
  own distribution at i promised. The forking index is the index with the largest fork score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

WILSON_Z = 1.959963984540054  # the 97.5% normal quantile: 95% intervals


def wilson_interval(successes: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (95% by default); (nan, nan) for n = 0."""
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Estimate:
    """P(correct) from n rollouts of one prefix."""

    n: int
    correct: int
    unparsed: int

    @property
    def p(self) -> float:
        """The correct rate (nan without rollouts)."""
        return self.correct / self.n if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        """Its Wilson 95% interval."""
        return wilson_interval(self.correct, self.n)


@dataclass(frozen=True)
class StepPoint:
    """p_k of one trace at one step boundary."""

    trace: str  # "correct" or "incorrect"
    step: int  # k: the prefix runs through step k (0: the prompt alone)
    prefix_len: int  # trace tokens in the prefix
    estimate: Estimate
    importance: float  # p_k - p_{k-1} (nan at k = 0)


def step_points(trace: str, boundaries: Sequence[tuple[int, int]], estimates: Sequence[Estimate]) -> list[StepPoint]:
    """The p_k curve of one trace: `boundaries` (step, prefix length) with their estimates, in step order."""
    points: list[StepPoint] = []
    for (step, prefix_len), estimate in zip(boundaries, estimates):
        importance = estimate.p - points[-1].estimate.p if points else math.nan
        points.append(StepPoint(trace, step, prefix_len, estimate, importance))
    return points


@dataclass(frozen=True)
class Localized:
    """Where the incorrect trace loses its chance: k*, its drop, and how the correct trace fares."""

    kstar: int | None  # None: the incorrect trace has no step, or p_k never falls along it
    drop: float  # p_{k*-1} - p_{k*} (positive: a drop)
    separated: bool  # the Wilson intervals of p_{k*-1} and p_{k*} do not overlap
    correct_min: float  # the lowest p_k along the correct trace (k >= 1; nan if it has no step)


def localize(incorrect: Sequence[StepPoint], correct: Sequence[StepPoint]) -> Localized:
    """k*: the incorrect trace's step with the largest drop in p_k (earliest on ties)."""
    steps = [point for point in incorrect if point.step > 0 and not math.isnan(point.importance)]
    correct_values = [point.estimate.p for point in correct if point.step > 0]
    correct_min = min(correct_values) if correct_values else math.nan
    if not steps:
        return Localized(None, math.nan, False, correct_min)
    worst = min(steps, key=lambda point: (point.importance, point.step))
    if worst.importance >= 0:
        return Localized(None, math.nan, False, correct_min)  # p_k never falls: no step to blame
    before = next(point for point in incorrect if point.step == worst.step - 1)
    separated = before.estimate.interval[0] > worst.estimate.interval[1]
    return Localized(worst.step, -worst.importance, separated, correct_min)


@dataclass(frozen=True)
class Alternative:
    """One token tried at a fork index: its probability there and the outcomes of its continuations."""

    token_id: int
    prob: float
    actual: bool  # the token the trace took
    estimate: Estimate


@dataclass(frozen=True)
class ForkIndex:
    """One token index of step k* with the alternatives tried there."""

    index: int  # trace token index
    alternatives: tuple[Alternative, ...]

    @property
    def expected(self) -> float:
        """o_i: the alternatives' correct rates weighted by their probabilities (renormalized over those tried)."""
        mass = sum(a.prob for a in self.alternatives)
        return sum(a.prob * a.estimate.p for a in self.alternatives) / mass if mass > 0 else math.nan

    @property
    def actual(self) -> Alternative:
        """The alternative the trace took."""
        return next(a for a in self.alternatives if a.actual)

    @property
    def fork_score(self) -> float:
        """o_i - acc(actual token): how far the trace's own token lowered P(correct) below o_i."""
        return self.expected - self.actual.estimate.p


def forking_index(indices: Sequence[ForkIndex]) -> ForkIndex | None:
    """The index with the largest fork score (earliest on ties); None without indices."""
    scored = [i for i in indices if not math.isnan(i.fork_score)]
    return max(scored, key=lambda i: (i.fork_score, -i.index)) if scored else None
