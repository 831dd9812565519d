"""`cot-patching repair`: relabel a run under the current trace rules; set aside what a fresh run would not write."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cot_patching.cli.errors import clear_errors


def repair_command(
    outdir: str = typer.Argument(..., help="A mining output directory."),
    model: Optional[str] = typer.Option(None, "--model", help="The run's model at another path or id (its "
                                        "identity must match the manifest).  [default: the recorded one]"),
) -> None:
    """Recompute spans, parses and labels from the token ids (which never change), re-apply the stop rule, rewrite
    pairs/csv/summary, and record the repair in the manifest. Attempts a fresh run would not have made, and damaged
    lines, move to runs.set-aside.jsonl; nothing is deleted."""
    from cot_patching.cli.run_model import run_tokenizer
    from cot_patching.mining.repair import repair_run
    from cot_patching.runs import artifacts
    from cot_patching.runs.directory import RunDirectory
    from cot_patching.runs.files import ArtifactError

    with clear_errors():
        root = Path(outdir)
        if not RunDirectory(root).manifest_path.is_file():
            raise ArtifactError(f"{root} has no {artifacts.MANIFEST_FILE}: not a mining output directory")
        tokenizer = run_tokenizer(root, model)
        report = repair_run(root, tokenizer)
    typer.echo(f"{root}: {report.runs_before} attempts read, {report.relabelled} relabelled, "
               f"{report.respanned} with new spans; pairs {report.pairs_before} -> {report.pairs_after}")
    for line in report.set_aside:
        typer.echo(f"set aside ({artifacts.SET_ASIDE_FILE}): {line}")
    if report.reopened:
        typer.echo(f"{len(report.reopened)} problem(s) have no pair and tries left: {', '.join(report.reopened)}; "
                   "rerun the run's `mine` command (same hardware and software) to decode them")
