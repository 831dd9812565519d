"""`cot-patching validate`: check every SPEC §6 invariant of a mining output directory."""

from __future__ import annotations

from pathlib import Path

import typer

from cot_patching.cli.errors import clear_errors


def validate_command(
    outdir: str = typer.Argument(..., help="A mining output directory."),
    tokens: bool = typer.Option(True, "--tokens/--no-tokens",
                                help="Load the run's tokenizer to check decode and token spans."),
) -> None:
    """Print each violation as FILE:LINE: message; exit 1 if there is any."""
    from cot_patching import artifacts
    from cot_patching.models import load_tokenizer, resolve_model
    from cot_patching.validate import validate_outdir

    with clear_errors():
        root = Path(outdir)
        if not root.is_dir():
            raise artifacts.ArtifactError(f"{root} is not a directory")
        tokenizer = None
        if tokens:
            model = artifacts.load_manifest(root).get("settings", {}).get("model")
            if model is None:
                raise artifacts.ArtifactError(f"{root}/{artifacts.MANIFEST_FILE} names no model")
            tokenizer = load_tokenizer(resolve_model(model))
        violations = validate_outdir(root, tokenizer)
    for violation in violations:
        typer.echo(str(violation))
    n_runs = len(artifacts.read_runs(root / artifacts.RUNS_FILE)) if (root / artifacts.RUNS_FILE).is_file() else 0
    if violations:
        typer.echo(f"{len(violations)} violation(s) in {root}", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"OK: {root} ({n_runs} runs) satisfies every checked invariant")
