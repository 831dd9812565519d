"""Layer x step heatmaps of `normalized`: per pair, and the mean over pairs with a bootstrap confidence interval."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Sequence

from cot_patching.runs.figures import save_figure

ANSWER_COLUMN = "answer"  # the final_answer alignment, shown as the last column
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
FEW_PAIRS = 10  # a mean cell resting on fewer pairs is marked "few" on the heatmap
NULL_FILE = "null_comparison.csv"


def grid(rows: Sequence[dict[str, Any]], direction: str, hook: str, pair_id: str | None = None
         ) -> tuple[list[int], list[str], dict[tuple[int, str], list[float]]]:
    """(layers, columns, values): `normalized` per (layer, step column), one value per pair (NaN cells skipped)."""
    chosen = [row for row in rows if row["direction"] == direction and row["hook"] == hook
              and row["alignment"] in ("step", "final_answer")
              and (pair_id is None or row["pair_id"] == pair_id)
              and row["normalized"] is not None and not math.isnan(row["normalized"])]
    layers = sorted({row["layer"] for row in chosen})
    steps = sorted({row["step_idx"] for row in chosen if row["alignment"] == "step"})
    columns = [f"step {k}" for k in steps] + ([ANSWER_COLUMN] if any(r["alignment"] == "final_answer"
                                                                      for r in chosen) else [])
    values: dict[tuple[int, str], list[float]] = {}
    for row in chosen:
        column = ANSWER_COLUMN if row["alignment"] == "final_answer" else f"step {row['step_idx']}"
        values.setdefault((row["layer"], column), []).append(row["normalized"])
    return layers, columns, values


def bootstrap_mean(values: Sequence[float], samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED,
                   level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean and a percentile bootstrap interval, resampling the values (one per pair)."""
    if not values:
        return math.nan, math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, math.nan, math.nan
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(samples))
    low = means[int((1 - level) / 2 * samples)]
    high = means[min(samples - 1, int((1 + level) / 2 * samples))]
    return mean, low, high


def _draw(ax: Any, matrix: list[list[float]], layers: list[int], columns: list[str], title: str,
          annotate: list[list[str]] | None = None) -> Any:
    import numpy as np

    data = np.array(matrix, dtype=float)
    image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", origin="lower", cmap="RdBu_r", vmin=-1, vmax=1,
                      interpolation="nearest")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=7)
    step = max(1, len(layers) // 12)
    ax.set_yticks(range(0, len(layers), step), [str(layer) for layer in layers][::step], fontsize=7)
    ax.set_xlabel("aligned step")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    if annotate is not None and len(layers) * len(columns) <= 200:
        for i, line in enumerate(annotate):
            for j, text in enumerate(line):
                ax.text(j, i, text, ha="center", va="center", fontsize=5)
    return image


def write_heatmaps(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Per direction and hook: the mean heatmap with its 95% CI, and one heatmap per pair; PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written: list[Path] = []
    pair_ids = list(dict.fromkeys(row["pair_id"] for row in rows))
    for direction in dict.fromkeys(row["direction"] for row in rows):
        for hook in dict.fromkeys(row["hook"] for row in rows):
            layers, columns, values = grid(rows, direction, hook)
            if not layers or not columns:
                continue
            stats = {key: bootstrap_mean(vals) for key, vals in values.items()}
            mean = [[stats.get((layer, c), (math.nan,) * 3)[0] for c in columns] for layer in layers]
            width = [[(stats[(layer, c)][2] - stats[(layer, c)][1]) / 2 if (layer, c) in stats else math.nan
                      for c in columns] for layer in layers]
            counts = [[_cell_label(stats.get((layer, c)), len(values.get((layer, c), []))) for c in columns]
                      for layer in layers]
            fig, axes = plt.subplots(1, 2, figsize=(4 + 1.1 * len(columns), 1.8 + 0.18 * len(layers)),
                                     constrained_layout=True)
            image = _draw(axes[0], mean, layers, columns,
                          f"{direction}, {hook}: mean normalized over {len(pair_ids)} pairs (mean, n; "
                          f"'few': n < {FEW_PAIRS})", counts)
            _draw(axes[1], width, layers, columns, "95% bootstrap CI half-width over pairs")
            fig.colorbar(image, ax=axes, shrink=0.8, label="normalized (0 = no effect, 1 = source)")
            written += save_figure(fig, out_dir / f"heatmap_{direction}_{hook}_mean")
            plt.close(fig)
            per_pair = {pid: grid(rows, direction, hook, pid) for pid in pair_ids}
            per_pair = {pid: found for pid, found in per_pair.items() if found[0]}
            if per_pair:
                fig, axes = plt.subplots(1, len(per_pair), squeeze=False,
                                         figsize=(2.2 + 2.6 * len(per_pair), 1.8 + 0.18 * len(layers)),
                                         constrained_layout=True)
                for ax, (pid, (p_layers, p_columns, p_values)) in zip(axes[0], per_pair.items()):
                    matrix = [[p_values[(layer, c)][0] if (layer, c) in p_values else math.nan for c in p_columns]
                              for layer in p_layers]
                    image = _draw(ax, matrix, p_layers, p_columns, f"{pid} ({direction}, {hook})")
                fig.colorbar(image, ax=axes, shrink=0.8, label="normalized")
                written += save_figure(fig, out_dir / f"heatmap_{direction}_{hook}_pairs")
                plt.close(fig)
    return written


def _cell_label(stat: tuple[float, float, float] | None, n: int) -> str:
    if stat is None or math.isnan(stat[0]):
        return ""
    return f"{stat[0]:+.2f}\nn={n}" + ("\nfew" if n < FEW_PAIRS else "")


def null_comparison(rows: Sequence[dict[str, Any]], real: str = "denoise", null: str = "denoise_shuffled"
                    ) -> list[dict[str, Any]]:
    """Per (hook, layer, column): the mean normalized effect of `real` and of the `null` control, and their
    paired difference over the pairs that have both, with a 95% bootstrap interval over pairs."""
    out = []
    for hook in dict.fromkeys(row["hook"] for row in rows):
        layers, columns, _ = grid(rows, real, hook)
        by_pair: dict[str, dict[tuple[int, str], dict[str, float]]] = {}
        for row in rows:
            if row["hook"] != hook or row["direction"] not in (real, null) or row["normalized"] is None \
                    or math.isnan(row["normalized"]) or row["alignment"] not in ("step", "final_answer"):
                continue
            column = ANSWER_COLUMN if row["alignment"] == "final_answer" else f"step {row['step_idx']}"
            by_pair.setdefault(row["pair_id"], {}).setdefault((row["layer"], column), {})[row["direction"]] = \
                row["normalized"]
        for layer in layers:
            for column in columns:
                cells = [cell.get((layer, column), {}) for cell in by_pair.values()]
                real_values = [c[real] for c in cells if real in c]
                null_values = [c[null] for c in cells if null in c]
                paired = [c[real] - c[null] for c in cells if real in c and null in c]
                mean, low, high = bootstrap_mean(paired)
                out.append({"hook": hook, "layer": layer, "column": column, "n_real": len(real_values),
                            f"mean_{real}": _mean(real_values), "n_null": len(null_values),
                            f"mean_{null}": _mean(null_values), "n_paired": len(paired), "difference": mean,
                            "low": low, "high": high, "few": len(paired) < FEW_PAIRS,
                            "excludes_zero": not math.isnan(low) and (low > 0 or high < 0)})
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def write_null_comparison(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """null_comparison.csv (when the study ran the shuffled control); the paths written."""
    import csv
    import io

    from cot_patching.runs.files import atomic_write_text

    table = null_comparison(rows)
    if not table or not any(row["n_null"] for row in table):
        return []
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    path = Path(out_dir) / NULL_FILE
    atomic_write_text(path, buffer.getvalue())
    return [path]
