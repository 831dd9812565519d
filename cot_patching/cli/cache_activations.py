"""`cot-patching cache-activations`: residual-stream activations at the selected steps of every pair."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cot_patching.cli.errors import clear_errors


def cache_activations_command(
    results: str = typer.Option("results/", help="A mining output directory (pairs.jsonl, runs.jsonl)."),
    out: Optional[str] = typer.Option(None, help="Cache directory.  [default: RESULTS/activations]"),
    layers: str = typer.Option("all", help="Comma-separated layer indices, or 'all'."),
    hooks: str = typer.Option("resid_post", help="Any of resid_pre,resid_mid,resid_post."),
    steps: str = typer.Option("early,late", help="'early,late', 'early', 'late' or 'all' steps."),
    dtype: Optional[str] = typer.Option(None, help="Storage dtype bf16 or fp32.  [default: the model's]"),
    device: Optional[str] = typer.Option(None, help="Device.  [default: the mining run's]"),
    backend: Optional[str] = typer.Option(None, help="bridge or hooked.  [default: the mining run's]"),
    batch_traces: int = typer.Option(1, help="Traces per forward (right-padded; values equal one trace per forward "
                                     "within 1e-5 relative in fp32). 1 gives exactly the shape of the mining run."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard an existing cache in --out."),
    verify_hashes: bool = typer.Option(False, "--verify-hashes", help="Re-hash cached files on a rerun."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    model: Optional[str] = typer.Option(None, "--model", help="The run's model at another path or id (its "
                                        "identity must match the manifest).  [default: the recorded one]"),
) -> None:
    """Run the mining model on prompt + trace of both traces of each pair; save residuals at the selected steps."""
    from cot_patching.activations.cache import CacheSettings, cache_activations, parse_layers, steps_to_cache
    from cot_patching.cli.run_model import load_run_model
    from cot_patching.mining.settings import MineSettings
    from cot_patching.runs import artifacts
    from cot_patching.runs.directory import RunDirectory, load_pairs
    from cot_patching.runs.files import ArtifactError
    from cot_patching.runs.manifest import RunManifest

    with clear_errors():
        root = Path(results)
        manifest = RunManifest.load(root)
        pairs = load_pairs(root)  # fail on a broken results dir before loading a model
        if not pairs:
            raise ArtifactError(f"{root} has no pairs yet: nothing to cache (mine more, then rerun)")
        cache_dir = Path(out) if out else RunDirectory(root).activations_dir
        artifacts.owned_cache_files(cache_dir, [p.id for p in pairs])
        strict_format = MineSettings.recorded(manifest).strict_format
        recorded = manifest.model.to_json()

        def cache_settings(n_layers: int, model_dtype: str | None) -> CacheSettings:
            return CacheSettings(
                layers=parse_layers(layers, n_layers), hooks=tuple(h.strip() for h in hooks.split(",") if h.strip()),
                steps=steps.replace(" ", ""), dtype=dtype or ("bf16" if model_dtype == "bfloat16" else "fp32"),
            )

        # bad flags and pairs whose steps are not in their traces are refused before the model loads
        recorded_layers = recorded.get("n_layers")
        early = cache_settings(recorded_layers if isinstance(recorded_layers, int) else 10**6, recorded.get("dtype"))
        for pair in pairs:
            for trace in ("correct", "incorrect"):
                steps_to_cache(pair, trace, early.steps, strict_format)
        found, loaded = load_run_model(root, model, device, backend)
        settings = cache_settings(loaded.info.n_layers, loaded.info.dtype)
        report = cache_activations(
            loaded, root, cache_dir, settings,
            {**loaded.info.to_json(), "name": found.recorded_name},
            strict_format=strict_format, overwrite=overwrite,
            verify_hashes=verify_hashes, progress=progress, traces_per_forward=batch_traces,
        )
        for problem in report.repaired:
            typer.echo(f"re-caching: {problem}", err=True)
        typer.echo(f"cached {report.cached} pairs, {report.skipped} already cached")
