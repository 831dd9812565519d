"""Attribution patching: a first-order estimate of every activation-patching cell from one forward + backward.

For recipient R and source S, the estimate of patching position p of R (taking S's position p') at a hook is
grad_R(p) . (act_S(p') - act_R(p)), with grad_R the gradient of metric(R) with respect to R's activation; a
cell's estimate is the sum over its positions and both scoring rows. Its agreement with activation patching is
measured (Spearman rank correlation), never assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from cot_patching.activations.cache import hook_name
from cot_patching.experiments.alignment import Cell, ScoredTrace
from cot_patching.experiments.patching import padded_batch, rows_target_logprobs
from cot_patching.models.loading import LoadedModel

LEAF_HOOK = hook_name(0, "resid_pre")  # gradients start here: everything after it is in the graph


@dataclass(frozen=True)
class RecipientGradients:
    """R's activations and the gradient of metric(R) with respect to them, per hook name ([row, pos, d_model])."""

    metric: float
    acts: dict[str, Float[Tensor, "row pos d_model"]]
    grads: dict[str, Float[Tensor, "row pos d_model"]]


def recipient_gradients(model: LoadedModel, recipient: ScoredTrace, names: Sequence[str]) -> RecipientGradients:
    """One forward and one backward over R's two scoring rows: activations and d metric(R) / d activation."""
    captured: dict[str, Tensor] = {}
    wanted = set(names)

    def leaf(act: Tensor, hook: Any) -> Tensor:
        act = act.detach().requires_grad_(True)
        if LEAF_HOOK in wanted:
            captured[LEAF_HOOK] = act
        return act

    def capturer(name: str) -> Any:
        def capture(act: Tensor, hook: Any) -> Tensor:
            captured[name] = act
            return act
        return capture

    hooks = [(LEAF_HOOK, leaf)] + [(name, capturer(name)) for name in names if name != LEAF_HOOK]
    tokens = padded_batch(recipient.rows()).to(model.device)
    with torch.enable_grad():
        logits = model.model.run_with_hooks(tokens, fwd_hooks=hooks)
        gold, wrong = rows_target_logprobs(logits, [len(recipient.context)] * 2, recipient.targets)
        metric = gold.sum() - wrong.sum()
        order = list(names)
        grads = torch.autograd.grad(metric, [captured[name] for name in order])
    return RecipientGradients(
        float(metric.item()), {name: captured[name].detach() for name in order},
        {name: grad.detach() for name, grad in zip(order, grads)},
    )


def cell_attribution(
    cell: Cell, layer: int, hook: str, recipient: RecipientGradients, source_acts: dict[str, Tensor],
) -> list[list[float]]:
    """Per scoring row, per patched position: grad_R . (act_S - act_R) at one (hook, layer)."""
    name = hook_name(layer, hook)
    out = []
    for row in range(2):
        positions_r = list(cell.recipient[row])
        positions_s = list(cell.source[row])
        grad = recipient.grads[name][row, positions_r].float()
        delta = source_acts[name][row, positions_s].float() - recipient.acts[name][row, positions_r].float()
        out.append((grad * delta).sum(dim=-1).tolist())
    return out


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n, ties given their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            result[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of two equal-length sequences (NaN pairs dropped; NaN if fewer than 3 remain
    or one side is constant)."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} vs {len(y)} values")
    kept = [(a, b) for a, b in zip(x, y) if not (math.isnan(a) or math.isnan(b))]
    if len(kept) < 3:
        return float("nan")
    rx, ry = ranks([a for a, _ in kept]), ranks([b for _, b in kept])
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else float("nan")
