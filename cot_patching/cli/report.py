"""`cot-patching report`: one self-contained HTML page for a run (pair viewer, plots, caches, patching)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cot_patching.cli.errors import clear_errors


def report_command(
    results: str = typer.Argument(..., help="A mining output directory."),
    out: Optional[str] = typer.Option(None, "--out", help="The HTML file.  [default: RESULTS/report.html]"),
    tokens: bool = typer.Option(True, "--tokens/--no-tokens", help="Show traces token by token (loads the run's "
                                "tokenizer, not the model)."),
    model: Optional[str] = typer.Option(None, "--model", help="The run's model at another path or id, for its "
                                        "tokenizer.  [default: the recorded one]"),
) -> None:
    """Write RESULTS/report.html: summary, attempts, both traces of every pair side by side, caches, heatmaps."""
    from cot_patching.report import load_run_view, write_report
    from cot_patching.runs.directory import RunDirectory

    with clear_errors():
        root = Path(results)
        view = load_run_view(root)
        tokenizer = None
        if tokens and view.pairs:
            from cot_patching.cli.run_model import run_tokenizer
            from cot_patching.models.loading import ModelLoadError

            try:
                tokenizer = run_tokenizer(root, model)
            except (ModelLoadError, OSError) as err:
                typer.echo(f"note: no tokenizer ({err}); traces are shown by steps, without token shading", err=True)
        path = write_report(view, Path(out) if out else RunDirectory(root).report_path, tokenizer)
        typer.echo(f"wrote {path} ({path.stat().st_size} bytes; {len(view.pairs)} pairs, {len(view.runs)} attempts)")
