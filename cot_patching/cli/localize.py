"""`cot-patching localize`: where the incorrect trace goes wrong, from seeded rollouts of its exact prefixes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from cot_patching.cli.errors import clear_errors


def localize_command(
    results: str = typer.Option("results/", help="A mining output directory (pairs.jsonl, runs.jsonl)."),
    out: Optional[str] = typer.Option(None, help="Localization directory.  [default: RESULTS/localization]"),
    rollouts: int = typer.Option(100, help="Rollouts per step boundary of each trace (R; on a localized folder: "
                                 "more than recorded adds rollouts before the forking phase)."),
    stop_width: Optional[float] = typer.Option(None, "--stop-width", help="Adaptive stopping: after each round a "
                                               "prefix whose 95% interval half-width is at most this gets no more."),
    round_size: Optional[int] = typer.Option(None, "--round-size", help="Rollouts per prefix per round.  [default: "
                                             "R/4 with --stop-width, else R]"),
    temperature: float = typer.Option(0.7, help="Rollout temperature."),
    top_p: float = typer.Option(0.95, "--top-p", help="Rollout top-p."),
    batch_size: int = typer.Option(100, "--batch-size", help="Rollout slots per forward."),
    fork_rollouts: int = typer.Option(30, "--fork-rollouts", help="Continuations per alternative token inside k* "
                                      "(0: skip the forking-token phase)."),
    fork_threshold: float = typer.Option(0.05, "--fork-threshold", help="Alternatives with p above this are tried."),
    pairs: Optional[str] = typer.Option(None, help="Comma-separated pair ids.  [default: every pair]"),
    max_pairs: Optional[int] = typer.Option(None, "--max-pairs", help="The first N pairs (after --pairs)."),
    shard: Optional[str] = typer.Option(None, help="K/N: the pairs whose problems `mine --shard K/N` would mine (one rollout file per shard)."),
    verify: Optional[int] = typer.Option(None, "--verify", help="Replay every N-th recorded group and compare its "
                                         "tokens (1: every group) instead of decoding new rollouts."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the p_k plots (PNG and SVG)."),
    device: Optional[str] = typer.Option(None, help="Device.  [default: the mining run's]"),
    decode_path: Optional[str] = typer.Option(None, "--decode-path", help="Batched decode path.  [default: "
                                              "grouped_cuda_graph on CUDA, grouped_eager on CPU]"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    model: Optional[str] = typer.Option(None, "--model", help="The run's model at another path or id (its "
                                        "identity must match the manifest).  [default: the recorded one]"),
) -> None:
    """Roll out each pair's traces from every step boundary; p_k with intervals, k*, forking tokens inside k*."""
    from cot_patching.cli.run_model import load_run_model
    from cot_patching.experiments.study import select_pairs
    from cot_patching.localization.outputs import summarize
    from cot_patching.localization.rollouts import localize_run, read_rollouts, verify_rollouts
    from cot_patching.localization.settings import LocalizeSettings, rounds_for
    from cot_patching.mining.settings import MineSettings
    from cot_patching.runs.directory import RunDirectory, check_not_locked, load_pairs
    from cot_patching.runs.files import ArtifactError
    from cot_patching.runs.manifest import RunManifest

    with clear_errors():
        root = Path(results)
        out_dir = Path(out) if out else RunDirectory(root).localization_dir
        manifest = RunManifest.load(root)
        mined = MineSettings.recorded(manifest)
        run_pairs = load_pairs(root)
        if not run_pairs:
            raise ArtifactError(f"{root} has no pairs yet: nothing to localize (mine more, then rerun)")
        chosen = select_pairs(run_pairs, [p.strip() for p in pairs.split(",") if p.strip()] if pairs else None)
        if max_pairs is not None:
            if max_pairs < 1:
                raise ValueError(f"--max-pairs must be >= 1, got {max_pairs}")
            chosen = chosen[:max_pairs]
        if round_size is None and stop_width is not None:
            round_size = max(1, rollouts // 4)
        settings = LocalizeSettings(
            rollouts=rollouts, rounds=rounds_for(rollouts, round_size), stop_width=stop_width,
            temperature=temperature, top_p=top_p, batch_size=batch_size, fork_rollouts=fork_rollouts, fork_threshold=fork_threshold, max_new_tokens=mined.max_new_tokens,
            strict_format=mined.strict_format, shard=shard)
        if verify is not None and verify < 1:
            raise ValueError(f"--verify must be >= 1, got {verify}")
        if out_dir.is_dir():
            check_not_locked(out_dir)
        found, loaded = load_run_model(root, model, device, None)
        if verify is not None:
            records = read_rollouts(out_dir)
            if not records:
                raise ArtifactError(f"{out_dir} holds no rollout records to verify")
            compared, identical, differences = verify_rollouts(loaded, {p.id: p for p in run_pairs}, records, verify)
            typer.echo(f"replayed {compared} rollouts: {identical} identical token for token")
            for line in differences:
                typer.echo(f"  differs: {line}", err=True)
            if identical != compared:
                raise SystemExit(1)
            return
        report = localize_run(loaded, root, out_dir, settings, chosen,
                              {**loaded.info.to_json(), "name": found.recorded_name}, argv=sys.argv,
                              progress=progress, decode_path=decode_path)
        summary = summarize(run_pairs, out_dir, mined.max_new_tokens, loaded.tokenizer, plots=plots)
        rate = report.new_tokens / report.seconds if report.seconds else 0.0
        typer.echo(f"decoded {report.rollouts_done} rollouts ({report.rollouts_skipped} already done) in "
                   f"{report.groups_done} groups, {report.new_tokens} tokens in {report.seconds:.1f} s "
                   f"({rate:.0f} tok/s) -> {out_dir}")
        typer.echo(f"{summary['pairs']} pairs localized: k* found for {summary['pairs_with_kstar']}, a drop with "
                   f"separated 95% intervals for {summary['pairs_with_separated_drop']}; {out_dir}/steps.csv, "
                   "forks.csv, summary.json, p_k.png")
