"""`cot-patching mine`: the seed protocol's flags, YAML config defaults, a summary table at the end."""

from __future__ import annotations

import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from cot_patching.cli.errors import clear_errors
from cot_patching.mining.settings import OPTION_DEFAULTS, MineOptions
from cot_patching.runs.files import read_text_file

DEFAULTS = OPTION_DEFAULTS  # a short name for the help texts below; the defaults themselves are MineOptions' fields


def load_config(path: str | Path) -> dict[str, Any]:
    """Option defaults from a YAML file whose keys are the flag names (`max-tries` or `max_tries`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(read_text_file(path)) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path} must be a mapping of option names to values")
    config = {str(k).replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"config file {path}: unknown option(s) {', '.join(unknown)}")
    if isinstance(config.get("temperature_seq"), list):
        config["temperature_seq"] = ",".join(str(t) for t in config["temperature_seq"])
    elif isinstance(config.get("temperature_seq"), (int, float)) and not isinstance(config["temperature_seq"], bool):
        config["temperature_seq"] = str(config["temperature_seq"])
    return config


def merge_options(cli: dict[str, Any], config_path: str | None) -> MineOptions:
    """CLI flags over `--config` values over built-in defaults."""
    config = load_config(config_path) if config_path else {}
    merged = {**DEFAULTS, **config, **{k: v for k, v in cli.items() if v is not None}}
    names = {f.name for f in fields(MineOptions)}
    return MineOptions(**{k: v for k, v in merged.items() if k in names})


def mine_command(
    problems: Optional[str] = typer.Option(None, help=f"Problems JSON file.  [default: {DEFAULTS['problems']}]"),
    model: Optional[str] = typer.Option(None, help=f"Hub id, local HF dir, .gguf file, or 'embedded'.  [default: {DEFAULTS['model']}]"),
    outdir: Optional[str] = typer.Option(None, help=f"Output directory.  [default: {DEFAULTS['outdir']}]"),
    max_tries: Optional[int] = typer.Option(None, help=f"Attempts per problem at most.  [default: {DEFAULTS['max_tries']}]"),
    min_pairs: Optional[int] = typer.Option(None, help=f"Stop once this many pairs are found.  [default: {DEFAULTS['min_pairs']}]"),
    temperature_seq: Optional[str] = typer.Option(None, help=f"T=0 once, each non-zero T twice.  [default: {DEFAULTS['temperature_seq']}]"),
    top_p: Optional[float] = typer.Option(None, help=f"Nucleus mass.  [default: {DEFAULTS['top_p']}]"),
    max_new_tokens: Optional[int] = typer.Option(None, help=f"Tokens per attempt at most.  [default: {DEFAULTS['max_new_tokens']}]"),
    config: Optional[str] = typer.Option(None, help="YAML file of defaults for these options."),
    device: Optional[str] = typer.Option(None, help="cuda, cuda:1, cpu.  [default: cuda if available]"),
    dtype: Optional[str] = typer.Option(None, help=f"auto, bf16, fp16, fp32.  [default: {DEFAULTS['dtype']}]"),
    load_in_4bit: Optional[bool] = typer.Option(None, "--load-in-4bit", help="4-bit weights (bitsandbytes, CUDA)."),
    strict_format: Optional[bool] = typer.Option(None, "--strict-format", help="Accept only the seed regexes."),
    pair_unparsed: Optional[bool] = typer.Option(None, "--pair-unparsed", help="Let an unparsed attempt be the incorrect member."),
    backend: Optional[str] = typer.Option(None, help="bridge (TransformerLens 4), hooked (3.9 HookedTransformer) or auto: a resumed run's, else the installed one's.  [default: auto]"),
    shard: Optional[str] = typer.Option(None, help="K/N: mine only shard K of N of the problems (by a hash of each "
                                        "id); merge the N outdirs with `cot-patching merge`."),
    batch_size: Optional[int] = typer.Option(None, help="Attempts decoded per forward: the next attempt of the first N "
                                             "problems still due, each replayable in its slot (bridge backend). "
                                             f" [default: {DEFAULTS['batch_size']}]"),
    devices: Optional[str] = typer.Option(None, help="cuda:0,cuda:1,... or all: one worker process per device, each "
                                          "a shard in OUTDIR/shards/, merged into OUTDIR at the end."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard an existing run in --outdir."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Mine (correct, incorrect) chain-of-thought pairs for the same prompt."""
    cli_values = {k: v for k, v in locals().items() if k in DEFAULTS}
    with clear_errors():
        options = merge_options(cli_values, config)
        if devices is not None:
            run_devices(options, devices, overwrite=overwrite, progress=progress)
        else:
            run_mine(options, overwrite=overwrite, progress=progress)


def run_devices(options: MineOptions, devices_text: str, overwrite: bool = False, progress: bool = True) -> None:
    """One shard worker per device, a combined status line, then the merge into --outdir."""
    from cot_patching.mining.merge import merge_shards, merged_summary_line
    from cot_patching.mining.sharding import Shard, shard_problems
    from cot_patching.mining.workers import (
        failure_report,
        make_workers,
        mine_flags,
        parse_devices,
        run_workers,
        throughput_line,
    )
    from cot_patching.problems import load_problems
    from cot_patching.runs.directory import RunDirectory
    from cot_patching.runs.records import read_pairs

    if options.shard is not None:
        raise ValueError("--devices makes its own shards; do not also give --shard")
    devices = parse_devices(devices_text)
    problems = load_problems(options.problems)
    counts = [len(shard_problems(problems, Shard(k, len(devices)))) for k in range(len(devices))]
    outdir = Path(options.outdir)
    workers = make_workers(mine_flags(options) + (["--overwrite"] if overwrite else []), devices, outdir, counts)
    typer.echo(f"{len(workers)} workers ({', '.join(devices)}); logs in {RunDirectory(outdir).shards_dir}/shard-K.log")

    def show(line: str) -> None:
        if progress:
            typer.echo("\r" + line, nl=False, err=True)

    started = time.monotonic()
    codes = run_workers(workers, show)
    elapsed = time.monotonic() - started
    if progress:
        typer.echo("", err=True)
    failed = failure_report(workers, codes)
    if failed:
        for line in failed:
            typer.echo(line, err=True)
        raise typer.Exit(code=1)
    typer.echo(throughput_line(workers, elapsed))
    report = merge_shards(outdir, [str(w.outdir) for w in workers], problems_path=options.problems, argv=sys.argv)
    typer.echo(merged_summary_line(report) + f" -> {outdir}")
    print_next_steps(outdir, read_pairs(RunDirectory(outdir).pairs_path))


def run_mine(options: MineOptions, overwrite: bool = False, progress: bool = True) -> None:
    """Validate everything cheap first, then load the model and mine."""
    from cot_patching.mining import miner
    from cot_patching.models.backends import AUTO, resolve_backend
    from cot_patching.models.loading import load_model, resolve_model
    from cot_patching.problems import load_problems
    from cot_patching.runs.environment import environment_facts
    from cot_patching.runs.manifest import recorded_backend
    problems = load_problems(options.problems)
    if options.shard is not None:
        from cot_patching.mining.sharding import parse_shard, shard_problems

        problems = shard_problems(problems, parse_shard(options.shard))
    resumed_backend = None if overwrite else recorded_backend(Path(options.outdir))
    backend = resolve_backend(resumed_backend if options.backend == AUTO and resumed_backend else options.backend)
    settings = options.settings(miner.problems_sha256(options.problems), backend)
    resolve_model(options.model)
    miner.check_outdir(Path(options.outdir), settings, overwrite)
    loaded = load_model(options.model, device=options.device, dtype=options.dtype,
                        load_in_4bit=options.load_in_4bit, backend=backend)
    manifest = {
        "model": loaded.info.to_json(),
        "decode_path": loaded.decode_path,
        "environment": environment_facts(),
        "argv": sys.argv,
        "options": {f.name: getattr(options, f.name) for f in fields(options)},
    }
    result = miner.mine(problems, loaded, settings, options.outdir, min_pairs=options.min_pairs,
                        manifest=manifest, overwrite=overwrite, progress=progress)
    print_summary(result.summary, options, backend, resumed_from=result.resumed_from)
    print_next_steps(Path(options.outdir), result.pairs)


def print_summary(summary: dict[str, Any], options: MineOptions, backend: str, resumed_from: int = 0) -> None:
    """The final summary table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cot-patching mine: {options.outdir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("model", options.model)
    table.add_row("backend", backend)
    table.add_row("pairs found", f"{summary['pairs_found']} (target {options.min_pairs})")
    table.add_row("problems processed", str(summary["problems_processed"]))
    avg = summary["avg_attempts_per_paired_item"]
    table.add_row("avg attempts / paired item", "-" if avg is None else f"{avg:.2f}")
    table.add_row("attempts (parse ok / strict format / correct)",
                  f"{summary['attempts']} ({summary['attempts_parse_ok']} / "
                  f"{summary['attempts_strict_format_ok']} / {summary['attempts_correct']})")
    if resumed_from:
        table.add_row("attempts resumed from disk", str(resumed_from))
    for outcome in ("correct", "incorrect"):
        counts = summary["temperatures_by_outcome"][outcome]
        table.add_row(f"{outcome} by T", ", ".join(f"T={t}: {n}" for t, n in counts.items()) or "-")
    Console().print(table)


def print_next_steps(outdir: Path, pairs: list[Any]) -> None:
    """Where the first pair is, its two final answers, and the commands that come next."""
    from cot_patching.runs.directory import RunDirectory, load_pairs

    if not pairs:
        typer.echo(f"no pair yet in {outdir}: rerun the same command to resume, or give more problems / tries")
        return
    first = load_pairs(outdir)[0]
    typer.echo(f"first pair: {first.id} (gold {first.pair.gold_answer}) in {RunDirectory(outdir).pairs_path}")
    for which in ("correct", "incorrect"):
        run = first.trace(which)
        typer.echo(f"  {which:9s} attempt {run.attempt} (T={run.temperature}): Final Answer {run.final_answer!r} "
                   f"-> {run.normalized_answer} [{run.score_rule}], {len(run.step_spans)} steps")
    steps = first.pair.steps_selected
    typer.echo(f"  selected steps of the correct trace: early {steps['early']['step_idx']}, "
               f"late {steps['late']['step_idx']}")
    typer.echo("next:")
    typer.echo(f"  cot-patching reproduce --outdir {outdir} --all-pairs      # replay both traces token for token")
    typer.echo(f"  cot-patching validate {outdir}                            # check every invariant")
    typer.echo(f"  cot-patching cache-activations --results {outdir} --layers 0,12,23   # residuals at the steps")
    typer.echo(f"  cot-patching patch --results {outdir} --layers all                   # a patching study")
    typer.echo(f"  cot-patching report {outdir}                                         # see it: report.html")
