"""`cot-patching validate`: check every SPEC §6 invariant of a mining output directory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cot_patching.cli.errors import clear_errors


def validate_command(
    outdir: str = typer.Argument(..., help="A mining output directory."),
    tokens: bool = typer.Option(True, "--tokens/--no-tokens",
                                help="Load the run's tokenizer to check decode and token spans."),
    model: Optional[str] = typer.Option(None, "--model", help="The run's model at another path or id (its "
                                        "identity must match the manifest).  [default: the recorded one]"),
    math_verify: bool = typer.Option(False, "--math-verify", help="Also list the parsed attempts whose label "
                                     "HF math-verify disagrees with (a second opinion, not a violation)."),
) -> None:
    """Print each violation as FILE:LINE: message; exit 1 if there is any."""
    from cot_patching.cli.run_model import run_tokenizer, warn_version_drift
    from cot_patching.mining.validate import validate_outdir
    from cot_patching.runs.directory import RunDirectory
    from cot_patching.runs.files import ArtifactError
    from cot_patching.runs.records import read_runs

    with clear_errors():
        root = Path(outdir)
        if not root.is_dir():
            raise ArtifactError(f"{root} is not a directory")
        warn_version_drift(root)
        tokenizer = None
        if tokens:
            tokenizer = run_tokenizer(root, model)
        violations = validate_outdir(root, tokenizer)
        disagreements = []
        if math_verify:
            from cot_patching.mining.crosscheck import cross_check

            runs = read_runs(RunDirectory(root).runs_path) if not violations else []
            disagreements = cross_check(line.record for line in runs)
    for violation in violations:
        typer.echo(str(violation))
    for disagreement in disagreements:
        typer.echo(str(disagreement))
    if math_verify and not violations:
        typer.echo(f"math-verify: {len(disagreements)} disagreement(s) with our labels")
    if violations:
        typer.echo(f"{len(violations)} violation(s) in {root}", err=True)
        raise typer.Exit(code=1)
    n_runs = len(read_runs(RunDirectory(root).runs_path))
    typer.echo(f"OK: {root} ({n_runs} runs) satisfies every checked invariant")
