"""A localization's tables, summary and plots, computed from its rollout records alone (no model needed)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

from cot_patching.localization.rollouts import (
    Prefix,
    estimates_by_prefix,
    finite,
    pair_curves,
    read_rollouts,
)
from cot_patching.localization.stats import Alternative, Estimate, ForkIndex, forking_index, localize
from cot_patching.runs.artifacts import LOCALIZATION_FORKS_CSV, LOCALIZATION_STEPS_CSV, LOCALIZATION_SUMMARY_FILE
from cot_patching.runs.files import atomic_write_text, write_json
from cot_patching.runs.pairing import LoadedPair

STEP_COLUMNS = ["pair_id", "trace", "step", "prefix_len", "n", "correct", "unparsed", "p", "low", "high",
                "importance", "kstar"]
FORK_COLUMNS = ["pair_id", "step", "index", "token_id", "token_text", "prob", "actual", "n", "correct", "p", "low",
                "high", "expected", "fork_score", "forking_index"]


def _csv(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def fork_indices(pair: LoadedPair, estimates: dict[tuple[str, str, int], Estimate],
                 records: Sequence[dict[str, Any]]) -> list[ForkIndex]:
    """The fork indices of one pair's incorrect trace with the estimate of every alternative tried there."""
    tried: dict[int, dict[int, float]] = {}
    for record in records:
        if record["pair_id"] == pair.id and record["kind"] == "fork":
            tried.setdefault(int(record["fork_index"]), {})[int(record["fork_token"])] = float(record["fork_prob"])
    actual = list(pair.incorrect.token_ids)
    indices = []
    for index, alternatives in sorted(tried.items()):
        built = []
        for token, prob in sorted(alternatives.items(), key=lambda item: (-item[1], item[0])):
            prefix = Prefix(pair.id, "incorrect", "fork", 0, index + 1, index, token, prob)
            built.append(Alternative(token, prob, token == actual[index],
                                     estimates[(pair.id, prefix.tag, index + 1)]))
        if any(alt.actual for alt in built):
            indices.append(ForkIndex(index, tuple(built)))
    return indices


def summarize(run_pairs: Sequence[LoadedPair], out_dir: Path, max_new_tokens: int, tokenizer: Any = None,
              plots: bool = True) -> dict[str, Any]:
    """Write steps.csv, forks.csv, summary.json (and p_k plots) from every rollout record in `out_dir`."""
    records = read_rollouts(out_dir)
    estimates = estimates_by_prefix(records)
    localized_ids = {r["pair_id"] for r in records}
    step_rows: list[dict[str, Any]] = []
    fork_rows: list[dict[str, Any]] = []
    pairs_summary: dict[str, Any] = {}
    curves_by_pair = {}
    for pair in run_pairs:
        if pair.id not in localized_ids:
            continue
        curves = pair_curves(pair, estimates, max_new_tokens)
        found = localize(curves["incorrect"], curves["correct"])
        curves_by_pair[pair.id] = (curves, found)
        for trace in ("correct", "incorrect"):
            for point in curves[trace]:
                low, high = point.estimate.interval
                step_rows.append({
                    "pair_id": pair.id, "trace": trace, "step": point.step, "prefix_len": point.prefix_len,
                    "n": point.estimate.n, "correct": point.estimate.correct, "unparsed": point.estimate.unparsed,
                    "p": finite(point.estimate.p), "low": finite(low), "high": finite(high),
                    "importance": finite(point.importance),
                    "kstar": trace == "incorrect" and point.step == found.kstar})
        indices = fork_indices(pair, estimates, records)
        fork = forking_index(indices)
        for index in indices:
            for alt in index.alternatives:
                low, high = alt.estimate.interval
                fork_rows.append({
                    "pair_id": pair.id, "step": found.kstar, "index": index.index, "token_id": alt.token_id,
                    "token_text": tokenizer.decode([alt.token_id]) if tokenizer is not None else "",
                    "prob": alt.prob, "actual": alt.actual, "n": alt.estimate.n, "correct": alt.estimate.correct,
                    "p": finite(alt.estimate.p), "low": finite(low), "high": finite(high),
                    "expected": finite(index.expected), "fork_score": finite(index.fork_score),
                    "forking_index": fork is not None and index.index == fork.index})
        pairs_summary[pair.id] = {
            "kstar": found.kstar, "drop": finite(found.drop), "separated": found.separated,
            "correct_min": finite(found.correct_min),
            "p0": finite(curves["incorrect"][0].estimate.p) if curves["incorrect"] else None,
            "incorrect_steps": len(pair.incorrect.step_spans), "correct_steps": len(pair.correct.step_spans),
            "fork_indices_tried": len(indices),
            "forking_index": None if fork is None else {
                "index": fork.index, "fork_score": finite(fork.fork_score), "expected": finite(fork.expected),
                "actual_p": finite(fork.actual.estimate.p), "actual_token": fork.actual.token_id,
                "actual_text": tokenizer.decode([fork.actual.token_id]) if tokenizer is not None else None},
        }
    kstars = [s for s in pairs_summary.values() if s["kstar"] is not None]
    summary = {
        "pairs": len(pairs_summary), "rollouts": len(records),
        "step_rollouts": sum(1 for r in records if r["kind"] == "step"),
        "fork_rollouts": sum(1 for r in records if r["kind"] == "fork"),
        "pairs_with_kstar": len(kstars),
        "pairs_with_separated_drop": sum(1 for s in kstars if s["separated"]),
        "kstar_is_first_step": sum(1 for s in kstars if s["kstar"] == 1),
        "per_pair": pairs_summary,
    }
    atomic_write_text(out_dir / LOCALIZATION_STEPS_CSV, _csv(STEP_COLUMNS, step_rows))
    atomic_write_text(out_dir / LOCALIZATION_FORKS_CSV, _csv(FORK_COLUMNS, fork_rows))
    write_json(out_dir / LOCALIZATION_SUMMARY_FILE, summary)
    if plots and curves_by_pair:
        write_curve_plots(curves_by_pair, out_dir)
    return summary


def write_curve_plots(curves_by_pair: dict[str, Any], out_dir: Path) -> list[Path]:
    """One figure of every pair's p_k curves with Wilson intervals, k* marked (PNG and SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cot_patching.runs.figures import save_figure

    count = len(curves_by_pair)
    columns = min(4, count)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, squeeze=False, figsize=(3.2 * columns, 2.4 * rows),
                             constrained_layout=True)
    for ax, (pair_id, (curves, found)) in zip(axes.flat, curves_by_pair.items()):
        for trace, colour in (("correct", "tab:blue"), ("incorrect", "tab:red")):
            points = curves[trace]
            steps = [p.step for p in points]
            values = [p.estimate.p for p in points]
            lows = [p.estimate.interval[0] for p in points]
            highs = [p.estimate.interval[1] for p in points]
            ax.plot(steps, values, marker="o", markersize=3, color=colour, label=trace)
            ax.fill_between(steps, lows, highs, color=colour, alpha=0.15, linewidth=0)
        if found.kstar is not None:
            ax.axvline(found.kstar, color="black", linestyle="--", linewidth=0.8)
            ax.text(found.kstar, 1.02, "k*", ha="center", va="bottom", fontsize=7)
        ax.set_ylim(-0.02, 1.08)
        ax.set_title(pair_id, fontsize=8)
        ax.set_xlabel("prefix through step k", fontsize=7)
        ax.set_ylabel("P(correct | prefix)", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="lower left")
    paths = save_figure(fig, out_dir / "p_k")
    plt.close(fig)
    return paths
