"""A patching study over the pairs of a mining run: resumable tables, agreement, plots.

Unit of work: (pair, direction). Its rows are appended to results.csv (and attribution.csv) and fsynced, then one
line of progress.jsonl records the tables' byte sizes; a kill mid-unit leaves bytes past the last recorded size,
which the next run cuts off before redoing that unit. settings.json pins what the study computes; a rerun with other
settings is refused.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from cot_patching.activations.cache import hook_name
from cot_patching.experiments.alignment import ANSWERS
from cot_patching.experiments.attribution import cell_attribution, recipient_gradients, spearman
from cot_patching.experiments.sweep import (
    DEFINITIONS_VERSION,
    SHUFFLED,
    DirectionResult,
    SweepSettings,
    pair_traces,
    sweep_direction,
    trace_metric,
)
from cot_patching.experiments.tables import (
    ATTRIBUTION_COLUMNS,
    ATTRIBUTION_FILE,
    RESULT_COLUMNS,
    RESULTS_FILE,
    csv_line,
    read_table,
)
from cot_patching.models.loading import LoadedModel
from cot_patching.runs import artifacts
from cot_patching.runs.directory import RunDirectory, directory_lock, load_pairs
from cot_patching.runs.environment import environment_facts
from cot_patching.runs.files import (
    ArtifactError,
    append_fsynced,
    atomic_write_text,
    drop_torn_tail,
    file_sha256,
    read_json_file,
    read_jsonl_file,
    truncate_fsynced,
    write_json,
)
from cot_patching.runs.pairing import LoadedPair
from cot_patching.runs.progress import progress_bar

SETTINGS_FILE = "settings.json"
PROGRESS_FILE = "progress.jsonl"
AGREEMENT_FILE = artifacts.PATCHING_AGREEMENT_FILE
PLOT_PREFIX = "heatmap_"
STUDY_FILES = (SETTINGS_FILE, RESULTS_FILE, ATTRIBUTION_FILE, PROGRESS_FILE, AGREEMENT_FILE, artifacts.LOCK_FILE)


class StudyError(ValueError):
    """A study that cannot start or continue as asked (nothing was changed)."""


@dataclass(frozen=True)
class StudyReport:
    """What one `patch` call did."""

    units_done: int
    units_skipped: int
    rows: int
    seconds: float
    agreement: dict[str, Any]


def select_pairs(pairs: Sequence[LoadedPair], wanted: Sequence[str] | None) -> list[LoadedPair]:
    """The pairs named in `wanted` (all if None), in the run's order; an unknown id is refused."""
    if not wanted:
        return list(pairs)
    known = {pair.id for pair in pairs}
    unknown = [pair_id for pair_id in wanted if pair_id not in known]
    if unknown:
        raise StudyError(f"--pairs: no pair {', '.join(unknown)} in this run (pairs: {', '.join(sorted(known))})")
    return [pair for pair in pairs if pair.id in set(wanted)]


def study_definition(settings: SweepSettings, pair_ids: Sequence[str], attribution: bool,
                     model_info: dict[str, Any], results_dir: Path) -> dict[str, Any]:
    """The part of settings.json a rerun must match."""
    pairs_file = RunDirectory(results_dir).pairs_path
    return {
        "definitions_version": DEFINITIONS_VERSION,
        "sweep": {**{k: v for k, v in asdict(settings).items() if k != "only_steps" or v is not None},
                  "layers": list(settings.layers), "hooks": list(settings.hooks),
                  "alignments": list(settings.alignments), "directions": list(settings.directions)},
        "pairs": list(pair_ids), "attribution": attribution,
        "pairs_sha256": file_sha256(pairs_file),
        "model": {key: model_info.get(key) for key in ("name", "revision", "tokenizer_sha256", "dtype", "backend")},
    }


def read_study_settings(out_dir: Path) -> dict[str, Any] | None:
    """The study's settings.json in `out_dir` (None: there is none); a settings.json that is not a study's is refused."""
    path = out_dir / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        settings = read_json_file(path)
    except ArtifactError as err:
        raise StudyError(f"{err}: not a patching study's settings file; nothing was changed: use another --out") \
            from None
    if not isinstance(settings, dict) or not isinstance(settings.get("study"), dict):
        raise StudyError(f"{path} is not a patching study's settings file (no 'study' entry); nothing was changed: "
                         "use another --out")
    return settings


def _is_study_file_name(name: str) -> bool:
    return name in STUDY_FILES or (name.startswith(PLOT_PREFIX) and name.endswith((".png", ".svg")))


def owned_study_files(out_dir: Path) -> list[Path]:
    """The files the study in `out_dir` lists as its own: its tables, settings, progress, agreement and the
    heatmaps its settings.json records (none where `out_dir` holds no study)."""
    settings = read_study_settings(out_dir) if out_dir.is_dir() else None
    if settings is None:
        return []
    names = set(STUDY_FILES)
    listed = settings.get("files")
    if isinstance(listed, list):
        names |= {name for name in listed if isinstance(name, str) and Path(name).name == name}
    else:  # studies written before settings.json listed their files: heatmaps named after its directions and hooks
        sweep = settings["study"].get("sweep") or {}
        prefixes = tuple(f"{PLOT_PREFIX}{direction}_{hook}_" for direction in sweep.get("directions") or []
                         for hook in sweep.get("hooks") or [])
        names |= {path.name for path in out_dir.iterdir() if prefixes and path.name.startswith(prefixes)
                  and path.suffix in (".png", ".svg")}
    return sorted(out_dir / name for name in names if (out_dir / name).is_file())


def check_out_dir(out_dir: Path) -> None:
    """Refuse an --out that is neither new, nor a study of ours, nor free of the names a study writes."""
    if out_dir.is_dir() and read_study_settings(out_dir) is None:
        _refuse_foreign_files(out_dir)


def _refuse_foreign_files(out_dir: Path) -> None:
    """Refuse a folder without a study's settings.json that holds files a study would write over."""
    foreign = sorted(path.name for path in out_dir.iterdir()
                     if _is_study_file_name(path.name) and path.name != artifacts.LOCK_FILE)
    if foreign:
        raise StudyError(f"{out_dir} holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''} but no "
                         f"study {SETTINGS_FILE}: it is not a patching study of ours and nothing was changed; "
                         "use an empty or new --out")


def _read_progress(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / PROGRESS_FILE
    drop_torn_tail(path)
    if not path.exists():
        return []
    return read_jsonl_file(path)


def prepare_out_dir(out_dir: Path, definition: dict[str, Any], record: dict[str, Any], overwrite: bool,
                    attribution: bool) -> set[tuple[str, str]]:
    """Create or check the study directory; cut torn tails; the (pair, direction) units already done."""
    settings_path = out_dir / SETTINGS_FILE
    existing = read_study_settings(out_dir)
    if existing is None:
        _refuse_foreign_files(out_dir)
    elif overwrite:
        for path in owned_study_files(out_dir):
            if path.name not in (artifacts.LOCK_FILE, SETTINGS_FILE):
                path.unlink()
        settings_path.unlink()  # last: until it goes, a killed --overwrite is still recognised as a study
        existing = None
    if existing is not None:
        recorded = existing["study"]
        for key in definition:
            if recorded.get(key) != definition[key]:
                raise StudyError(f"{out_dir} holds a study with a different {key} ({recorded.get(key)!r}); use "
                                 "another --out or --overwrite")
    else:
        write_json(settings_path, {"study": definition, **record})
    tables = [(RESULTS_FILE, RESULT_COLUMNS)] + ([(ATTRIBUTION_FILE, ATTRIBUTION_COLUMNS)] if attribution else [])
    progress = _read_progress(out_dir)
    for name, columns in tables:
        header = csv_line(columns)
        path = out_dir / name
        recorded_size = progress[-1][name] if progress else len(header.encode())
        if not path.exists() or path.stat().st_size < recorded_size:
            if progress:
                raise StudyError(f"{path} is shorter than progress.jsonl records: the study's files were changed "
                                 "by hand; use --overwrite to start again")
            atomic_write_text(path, header)
        truncate_fsynced(path, recorded_size)
    return {(entry["pair_id"], entry["direction"]) for entry in progress}


def _attribution_lines(result: DirectionResult, grads: Any) -> tuple[list[str], list[float]]:
    lines, per_cell = [], []
    for row, cell in zip(result.rows, result.cells):
        values = cell_attribution(cell, row.layer, row.hook, grads, result.source_acts)
        per_cell.append(float(sum(sum(per_row) for per_row in values)))
        for answer_index, per_row in enumerate(values):
            for k, value in enumerate(per_row):
                lines.append(csv_line([row.pair_id, row.direction, row.hook, row.layer, row.alignment, row.step_idx,
                                       ANSWERS[answer_index], cell.recipient[answer_index][k],
                                       cell.source[answer_index][k], value]))
    return lines, per_cell


def run_study(
    model: LoadedModel, results_dir: str | Path, out_dir: str | Path, settings: SweepSettings, model_info: dict[str, Any],
    pair_ids: Sequence[str] | None = None, attribution: bool = True, overwrite: bool = False,
    progress: bool = True, argv: Sequence[str] = (), plots: bool = True,
) -> StudyReport:
    """Patch every selected pair in every direction, append the tables, then write agreement and heatmaps."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    pairs = select_pairs(load_pairs(results_dir), pair_ids)
    if any(layer >= model_info.get("n_layers", math.inf) for layer in settings.layers):
        raise StudyError(f"layers {list(settings.layers)}: the model has layers 0..{model_info['n_layers'] - 1}")
    if SHUFFLED in settings.directions and len(pairs) < 2:
        raise StudyError(f"the {SHUFFLED} control patches another pair's correct trace: choose at least 2 pairs")
    definition = study_definition(settings, [pair.id for pair in pairs], attribution, model_info, results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with directory_lock(out_dir):
        record = {"results": str(results_dir.resolve()), "argv": list(argv),
                  "environment": environment_facts(),
                  "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        done = prepare_out_dir(out_dir, definition, record, overwrite, attribution)
        units = [(pair, direction) for pair in pairs for direction in settings.directions]
        todo = [(pair, direction) for pair, direction in units if (pair.id, direction) not in done]
        bar = progress_bar(len(units), "pair x direction", "unit", progress,
                                    initial=len(units) - len(todo))
        rows_written = 0
        traces_cache: dict[str, Any] = {}
        for pair, direction in todo:
            unit_start = time.monotonic()
            if pair.id not in traces_cache:
                traces = pair_traces(model, pair)
                traces_cache = {pair.id: (traces, {n: trace_metric(model, t) for n, t in traces.traces.items()})}
            traces, metrics = traces_cache[pair.id]
            donor = None
            if direction == SHUFFLED:
                donor = pair_traces(model, pairs[(pairs.index(pair) + 1) % len(pairs)])
            result = sweep_direction(model, traces, direction, settings, metrics, donor)
            per_cell: list[float | None] = [None] * len(result.rows)
            sizes: dict[str, int] = {}
            if attribution:
                recipient, _ = traces.direction(direction)
                names = [hook_name(layer, hook) for hook in settings.hooks for layer in settings.layers]
                lines, estimates = _attribution_lines(result, recipient_gradients(model, recipient, names))
                per_cell = list(estimates)
                sizes[ATTRIBUTION_FILE] = append_fsynced(out_dir / ATTRIBUTION_FILE, "".join(lines))
            text = "".join(csv_line([row.pair_id, row.direction, row.hook, row.layer, row.alignment, row.step_idx,
                                     row.position, row.n_positions, row.metric_recipient, row.metric_source,
                                     row.metric_patched, row.normalized, estimate])
                           for row, estimate in zip(result.rows, per_cell))
            sizes[RESULTS_FILE] = append_fsynced(out_dir / RESULTS_FILE, text)
            append_fsynced(out_dir / PROGRESS_FILE, json.dumps({
                "pair_id": pair.id, "direction": direction, "rows": len(result.rows),
                "seconds": round(time.monotonic() - unit_start, 3), **sizes}) + "\n")
            rows_written += len(result.rows)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        rows = read_table(out_dir / RESULTS_FILE)
        agreement = attribution_agreement(rows) if attribution else {}
        write_json(out_dir / AGREEMENT_FILE, agreement)
        if plots:
            from cot_patching.experiments.plots import write_heatmaps, write_null_comparison

            plots_written = write_heatmaps(rows, out_dir) + write_null_comparison(rows, out_dir)
            study_settings = read_study_settings(out_dir) or {}
            listed = [name for name in study_settings.get("files") or [] if isinstance(name, str)]
            files = sorted(set(listed) | {path.name for path in plots_written})
            if files != listed:
                write_json(out_dir / SETTINGS_FILE, {**study_settings, "files": files})
    return StudyReport(len(todo), len(units) - len(todo), rows_written, time.monotonic() - started, agreement)


def attribution_agreement(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Spearman rank correlation of attribution estimates with activation patching's effect (patched - metric(R)),
    per pair, per alignment, and over all cells."""
    def rho(chosen: Sequence[dict[str, Any]]) -> dict[str, Any]:
        effects = [row["metric_patched"] - row["metric_recipient"] for row in chosen]
        estimates = [row["attribution"] for row in chosen]
        value = spearman(estimates, effects)
        return {"spearman": None if math.isnan(value) else value, "cells": len(chosen)}

    rows = [row for row in rows if row.get("attribution") is not None]
    pair_ids = list(dict.fromkeys(row["pair_id"] for row in rows))
    alignments = list(dict.fromkeys(row["alignment"] for row in rows))
    return {
        "overall": rho(rows),
        "per_pair": {pair_id: rho([r for r in rows if r["pair_id"] == pair_id]) for pair_id in pair_ids},
        "per_alignment": {name: rho([r for r in rows if r["alignment"] == name]) for name in alignments},
    }
