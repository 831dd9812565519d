"""`cot-patching patch`: a step-aligned activation-patching study (and attribution patching) over a run's pairs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from cot_patching.cli.errors import clear_errors


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def patch_command(
    results: str = typer.Option("results/", help="A mining output directory (pairs.jsonl, runs.jsonl)."),
    out: Optional[str] = typer.Option(None, help="Study directory.  [default: RESULTS/patching]"),
    layers: str = typer.Option("all", help="Comma-separated layer indices, or 'all'."),
    hooks: str = typer.Option("resid_post", help="Any of resid_pre,resid_mid,resid_post."),
    alignments: str = typer.Option("step,final_answer", help="Any of step,final_answer,position."),
    directions: str = typer.Option("denoise,noise", help="denoise (I takes C's activations), noise (C takes I's), "
                                   "denoise_shuffled (the null control: I takes the next pair's C)."),
    steps: str = typer.Option("all", help="all: every aligned step; kstar: only each pair's k* from "
                              "RESULTS/localization/summary.json (`cot-patching localize`)."),
    pairs: Optional[str] = typer.Option(None, help="Comma-separated pair ids.  [default: every pair]"),
    max_pairs: Optional[int] = typer.Option(None, "--max-pairs", help="The first N pairs of the run (after --pairs)."),
    attribution: bool = typer.Option(True, "--attribution/--no-attribution",
                                     help="Also run attribution patching and its agreement."),
    batch_cells: Optional[int] = typer.Option(None, "--batch-cells", help="Cells per forward (2 rows each).  "
                                              "[default: 1 on CPU, 8 on CUDA]"),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write heatmaps (PNG and SVG)."),
    device: Optional[str] = typer.Option(None, help="Device.  [default: the mining run's]"),
    backend: Optional[str] = typer.Option(None, help="bridge or hooked.  [default: the mining run's]"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard the study's files in --out first."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    model: Optional[str] = typer.Option(None, "--model", help="The run's model at another path or id (its "
                                        "identity must match the manifest).  [default: the recorded one]"),
) -> None:
    """Patch each pair's traces into each other, cell by cell; write results.csv, attribution, agreement, heatmaps."""
    from cot_patching.activations.cache import parse_layers
    from cot_patching.cli.run_model import load_run_model
    from cot_patching.experiments.study import check_out_dir, run_study, select_pairs
    from cot_patching.experiments.sweep import SweepSettings
    from cot_patching.runs.directory import RunDirectory, check_not_locked, load_pairs
    from cot_patching.runs.files import ArtifactError
    from cot_patching.runs.manifest import RunManifest

    with clear_errors():
        root = Path(results)
        out_dir = Path(out) if out else RunDirectory(root).patching_dir
        recorded = RunManifest.load(root).model.to_json()
        loaded_pairs = load_pairs(root)  # a broken results dir fails before a model loads
        if not loaded_pairs:
            raise ArtifactError(f"{root} has no pairs yet: nothing to patch (mine more, then rerun)")
        chosen = select_pairs(loaded_pairs, _names(pairs) if pairs else None)
        if max_pairs is not None:
            if max_pairs < 1:
                raise ValueError(f"--max-pairs must be >= 1, got {max_pairs}")
            chosen = chosen[:max_pairs]
        only_steps = kstar_steps(root, [pair.id for pair in chosen]) if steps == "kstar" else None
        if steps not in ("all", "kstar"):
            raise ValueError(f"--steps must be all or kstar, got {steps!r}")
        n_layers = recorded.get("n_layers")
        SweepSettings(layers=parse_layers(layers, n_layers) if isinstance(n_layers, int) else (0,),
                      hooks=_names(hooks), alignments=_names(alignments), directions=_names(directions),
                      cells_per_forward=1 if batch_cells is None else batch_cells,
                      only_steps=only_steps)  # bad flags are refused before the model loads
        if out_dir.is_dir():
            check_not_locked(out_dir)
            check_out_dir(out_dir)
        found, loaded = load_run_model(root, model, device, backend)
        settings = SweepSettings(
            layers=parse_layers(layers, loaded.info.n_layers), hooks=_names(hooks), alignments=_names(alignments),
            directions=_names(directions), only_steps=only_steps,
            cells_per_forward=batch_cells if batch_cells is not None else (8 if loaded.device.type == "cuda" else 1),
        )
        report = run_study(
            loaded, root, out_dir, settings, {**loaded.info.to_json(), "name": found.recorded_name},
            pair_ids=[pair.id for pair in chosen] if pairs or max_pairs else None, attribution=attribution,
            overwrite=overwrite, progress=progress, argv=sys.argv, plots=plots,
        )
        typer.echo(f"patched {report.units_done} (pair, direction) units, {report.units_skipped} already done; "
                   f"{report.rows} rows in {report.seconds:.1f} s -> {out_dir}/results.csv")
        if report.agreement:
            overall = report.agreement["overall"]
            typer.echo(f"attribution vs activation patching: Spearman {_fmt(overall['spearman'])} over "
                       f"{overall['cells']} cells")
            for pair_id, entry in report.agreement["per_pair"].items():
                typer.echo(f"  {pair_id}: {_fmt(entry['spearman'])} ({entry['cells']} cells)")


def kstar_steps(results: Path, pair_ids: list[str]) -> dict[str, int | None]:
    """Each pair's k* from the run's localization summary; a pair it did not localize is refused."""
    from cot_patching.runs.artifacts import LOCALIZATION_SUMMARY_FILE
    from cot_patching.runs.directory import RunDirectory
    from cot_patching.runs.files import ArtifactError, read_json_file

    path = RunDirectory(results).localization_dir / LOCALIZATION_SUMMARY_FILE
    if not path.is_file():
        raise ArtifactError(f"--steps kstar needs {path}: run `cot-patching localize --results {results}`")
    per_pair = read_json_file(path, dict).get("per_pair") or {}
    missing = [pair_id for pair_id in pair_ids if pair_id not in per_pair]
    if missing:
        raise ArtifactError(f"--steps kstar: {path} has no k* for {', '.join(missing[:5])}; localize "
                                      "them or choose --pairs")
    return {pair_id: per_pair[pair_id].get("kstar") for pair_id in pair_ids}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"
