"""A run as one self-contained HTML page: summary, plots, pair viewer, activation cache and patching heatmaps.
Reads a run directory's files only; imports nothing that loads or runs a model."""

from __future__ import annotations

from cot_patching.report.data import RunView, load_run_view
from cot_patching.report.render import render_report, write_report

__all__ = ["RunView", "load_run_view", "render_report", "write_report"]
