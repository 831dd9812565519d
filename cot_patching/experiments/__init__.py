"""Experiments on mined pairs: residual patching primitives, step-aligned patching sweeps, attribution patching,
the study's tables and heatmaps. Imports mining's outputs; nothing below imports it."""

from __future__ import annotations

from cot_patching.experiments.alignment import Cell, ScoredTrace, cells_for, first_difference, scored_trace
from cot_patching.experiments.attribution import recipient_gradients, spearman
from cot_patching.experiments.patching import (
    ResidualPatch,
    answer_target,
    final_answer_target,
    run_rows_with_patches,
    run_with_patches,
    target_logprobs,
)
from cot_patching.experiments.study import StudyReport, run_study
from cot_patching.experiments.sweep import (
    DEFINITIONS_VERSION,
    PatchRow,
    SweepSettings,
    pair_traces,
    sweep_direction,
    trace_metric,
)
from cot_patching.experiments.tables import layer_step_tensor, read_table

__all__ = [
    "Cell", "DEFINITIONS_VERSION", "PatchRow", "ResidualPatch", "ScoredTrace", "StudyReport", "SweepSettings",
    "answer_target", "cells_for", "final_answer_target", "first_difference", "layer_step_tensor", "pair_traces",
    "read_table", "recipient_gradients", "run_rows_with_patches", "run_study", "run_with_patches", "scored_trace",
    "spearman", "sweep_direction", "target_logprobs", "trace_metric",
]
