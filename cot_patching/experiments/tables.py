"""The patching study's tables on disk (results.csv, attribution.csv) and views of them: rows, [layer, step] tensors."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from cot_patching.runs import artifacts
from cot_patching.runs.files import read_text_file

RESULTS_FILE = artifacts.PATCHING_RESULTS_CSV
ATTRIBUTION_FILE = "attribution.csv"
RESULT_COLUMNS = ("pair_id", "direction", "hook", "layer", "alignment", "step_idx", "position", "n_positions",
                  "metric_recipient", "metric_source", "metric_patched", "normalized", "attribution")
ATTRIBUTION_COLUMNS = ("pair_id", "direction", "hook", "layer", "alignment", "step_idx", "answer", "position",
                       "source_position", "attribution")
INT_COLUMNS = {"layer", "step_idx", "position", "n_positions", "source_position"}
FLOAT_COLUMNS = {"metric_recipient", "metric_source", "metric_patched", "normalized", "attribution"}


def csv_line(values: Sequence[Any]) -> str:
    """One CSV line as `csv` writes it: floats round-trip exactly (repr), None is an empty field."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _typed(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in INT_COLUMNS:
            out[key] = int(value) if value != "" else None
        elif key in FLOAT_COLUMNS:
            out[key] = float(value) if value != "" else None
        else:
            out[key] = value
    return out


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Every row of results.csv or attribution.csv, ints and floats parsed (empty fields are None)."""
    text = read_text_file(Path(path))
    return [_typed(row) for row in csv.DictReader(io.StringIO(text, newline=""))]


def layer_step_tensor(
    rows: Sequence[dict[str, Any]], pair_id: str, direction: str, hook: str = "resid_post", value: str = "normalized",
    alignment: str = "step",
) -> tuple[Float[Tensor, "layer column"], list[int], list[int]]:
    """One pair's results as a [layer, step] tensor (alignment `step`) or [layer, pos] (alignment `position`),
    NaN where absent, with its layers and its steps or positions."""
    axis = "position" if alignment == "position" else "step_idx"
    chosen = [row for row in rows if row["pair_id"] == pair_id and row["direction"] == direction
              and row["hook"] == hook and row["alignment"] == alignment]
    layers = sorted({row["layer"] for row in chosen})
    columns = sorted({row[axis] for row in chosen})
    out = torch.full((len(layers), len(columns)), math.nan)
    for row in chosen:
        out[layers.index(row["layer"]), columns.index(row[axis])] = row[value] if row[value] is not None else math.nan
    return out, layers, columns
