"""`cot-patching reproduce`: re-run logged attempts and fail unless their token ids match exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cot_patching.cli.errors import clear_errors


def reproduce_command(
    outdir: str = typer.Option("results/", help="A mining output directory."),
    id: Optional[str] = typer.Option(None, "--id", help="Problem id of the attempt to replay."),
    attempt: Optional[int] = typer.Option(None, help="Attempt index (0-based) to replay."),
    all_pairs: bool = typer.Option(False, "--all-pairs", help="Replay both traces of every pair."),
    all_runs: bool = typer.Option(False, "--all-runs", help="Replay every logged attempt."),
    isolated: bool = typer.Option(False, "--isolated", help="Replay each batched attempt alone in its slot of an "
                                  "idle batch (default: several to a batch of their recorded shape, each in its "
                                  "own slot)."),
    device: Optional[str] = typer.Option(None, help="Device to replay on.  [default: the run's]"),
    dtype: Optional[str] = typer.Option(None, help="dtype to replay in.  [default: the run's]"),
    backend: Optional[str] = typer.Option(None, help="bridge or hooked.  [default: the run's]"),
    model: Optional[str] = typer.Option(None, "--model", help="The run's model at another path or id (its "
                                        "identity must match the manifest).  [default: the recorded one]"),
) -> None:
    """Replay attempts from their logged model, prompt ids, T, top-p, max tokens and seed."""
    from cot_patching.cli.run_model import check_tokenizer, echo_model, run_model, warn_version_drift
    from cot_patching.decoding.replay import replay_attempts
    from cot_patching.models.loading import check_loaded_identity, load_model
    from cot_patching.runs import artifacts
    from cot_patching.runs.directory import RunDirectory
    from cot_patching.runs.files import ArtifactError
    from cot_patching.runs.manifest import RunManifest, recorded_backend

    with clear_errors():
        root = Path(outdir)
        run = RunDirectory(root)
        if not run.is_run():
            raise ArtifactError(f"{root} has no {artifacts.RUNS_FILE}")
        if all_runs:
            records = [line.record for line in run.runs()]
        elif all_pairs:
            pairs = run.loaded_pairs() if run.pairs_path.is_file() else []
            records = [record for pair in pairs for record in (pair.correct, pair.incorrect)]
        elif id is not None and attempt is not None:
            records = [run.record(id, attempt)]
        else:
            raise ValueError("give --id and --attempt, --all-pairs or --all-runs")
        if not records:
            typer.echo("no pairs to replay")
            return
        found = run_model(root, model)
        warn_version_drift(root)
        recorded_model = found.recorded
        model_names = {r.model for r in records}
        if model_names != {found.recorded_name}:
            raise ArtifactError(f"attempts come from models {sorted(model_names)}, the run from "
                                          f"{found.recorded_name!r}")
        mined_backend = recorded_backend(root)
        echo_model(found.spec)
        loaded = load_model(
            found.spec,
            device=device or recorded_model.get("device"),
            dtype=dtype or recorded_model.get("dtype"),
            fallback=False,
            backend=backend or mined_backend,
        )
        check_loaded_identity(loaded.info, recorded_model)
        check_tokenizer(root, found, loaded.tokenizer)
        if loaded.info.backend != mined_backend:
            typer.echo(f"warning: the run was mined on the {mined_backend} backend, this replay "
                       f"uses {loaded.info.backend}; tokens can differ", err=True)
        mined_path = RunManifest.load(root).last_session.decode_path
        if mined_path and mined_path != loaded.decode_path:
            typer.echo(f"warning: the run was decoded on the {mined_path} path, this replay uses "
                       f"{loaded.decode_path}; tokens can differ", err=True)
        failures = 0
        for record, result in replay_attempts(loaded, records, isolated=isolated):
            status = "MATCH" if result.match else f"MISMATCH at token {result.first_mismatch}"
            typer.echo(f"{record.id} attempt {record.attempt} T={record.temperature} seed={record.seed}: "
                       f"{status} ({result.n_replayed}/{result.n_logged} tokens)")
            failures += not result.match
        typer.echo(f"{len(records) - failures}/{len(records)} attempts reproduced exactly")
        if failures:
            raise typer.Exit(code=1)
