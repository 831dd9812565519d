"""`cot-patching mine`: the seed protocol's flags, YAML config defaults, a summary table at the end."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from cot_patching.cli.errors import clear_errors

DEFAULTS: dict[str, Any] = {
    "problems": "data/problems.sample.json",
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "outdir": "results/",
    "max_tries": 8,
    "min_pairs": 20,
    "temperature_seq": "0.0,0.9,1.0,0.7,0.5",
    "top_p": 0.95,
    "max_new_tokens": 256,
    "device": None,
    "dtype": "auto",
    "load_in_4bit": False,
    "strict_format": False,
    "pair_unparsed": False,
    "backend": "auto",
    "shard": None,
    "batch_size": 1,
}


@dataclass(frozen=True)
class MineOptions:
    """The mine command's options after CLI flags, `--config` and defaults are merged."""

    problems: str
    model: str
    outdir: str
    max_tries: int
    min_pairs: int
    temperature_seq: str
    top_p: float
    max_new_tokens: int
    device: str | None
    dtype: str
    load_in_4bit: bool
    strict_format: bool
    pair_unparsed: bool
    backend: str
    shard: str | None = None
    batch_size: int = 1

    def __post_init__(self) -> None:
        from cot_patching.decoding.sampling import DecodeConfig, parse_temperature_seq

        for f in fields(self):
            value, kinds = getattr(self, f.name), _OPTION_TYPES[f.name]
            if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
                wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
                raise ValueError(f"--{f.name.replace('_', '-')} must be {wanted}, got {value!r}")
        if self.min_pairs < 1:
            raise ValueError(f"--min-pairs must be >= 1, got {self.min_pairs}")
        if self.max_tries < 1:
            raise ValueError(f"--max-tries must be >= 1, got {self.max_tries}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        parse_temperature_seq(self.temperature_seq)
        DecodeConfig(0.0, self.top_p, self.max_new_tokens)
        if self.shard is not None:
            from cot_patching.mining.sharding import parse_shard

            parse_shard(self.shard)


_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "problems": (str,), "model": (str,), "outdir": (str,), "max_tries": (int,), "min_pairs": (int,),
    "temperature_seq": (str,), "top_p": (int, float), "max_new_tokens": (int,), "device": (str, type(None)),
    "dtype": (str,), "load_in_4bit": (bool,), "strict_format": (bool,), "pair_unparsed": (bool,), "backend": (str,),
    "shard": (str, type(None)), "batch_size": (int,),
}


def load_config(path: str | Path) -> dict[str, Any]:
    """Option defaults from a YAML file whose keys are the flag names (`max-tries` or `max_tries`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text("utf-8")) or {}
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
    problems: Optional[str] = typer.Option(None, help="Problems JSON file.  [default: data/problems.sample.json]"),
    model: Optional[str] = typer.Option(None, help="Hub id, local HF dir, .gguf file, or 'embedded'.  [default: meta-llama/Llama-3.1-8B-Instruct]"),
    outdir: Optional[str] = typer.Option(None, help="Output directory.  [default: results/]"),
    max_tries: Optional[int] = typer.Option(None, help="Attempts per problem at most.  [default: 8]"),
    min_pairs: Optional[int] = typer.Option(None, help="Stop once this many pairs are found.  [default: 20]"),
    temperature_seq: Optional[str] = typer.Option(None, help="T=0 once, each non-zero T twice.  [default: 0.0,0.9,1.0,0.7,0.5]"),
    top_p: Optional[float] = typer.Option(None, help="Nucleus mass.  [default: 0.95]"),
    max_new_tokens: Optional[int] = typer.Option(None, help="Tokens per attempt at most.  [default: 256]"),
    config: Optional[str] = typer.Option(None, help="YAML file of defaults for these options."),
    device: Optional[str] = typer.Option(None, help="cuda, cuda:1, cpu.  [default: cuda if available]"),
    dtype: Optional[str] = typer.Option(None, help="auto, bf16, fp16, fp32.  [default: auto]"),
    load_in_4bit: Optional[bool] = typer.Option(None, "--load-in-4bit", help="4-bit weights (bitsandbytes, CUDA)."),
    strict_format: Optional[bool] = typer.Option(None, "--strict-format", help="Accept only the seed regexes."),
    pair_unparsed: Optional[bool] = typer.Option(None, "--pair-unparsed", help="Let an unparsed attempt be the incorrect member."),
    backend: Optional[str] = typer.Option(None, help="bridge (TransformerLens 4), hooked (3.9 HookedTransformer) or auto: a resumed run's, else the installed one's.  [default: auto]"),
    shard: Optional[str] = typer.Option(None, help="K/N: mine only shard K of N of the problems (by a hash of each "
                                        "id); merge the N outdirs with `cot-patching merge`."),
    batch_size: Optional[int] = typer.Option(None, help="Attempts decoded per forward: the next attempt of the first N "
                                             "problems still due, each replayable in its slot (bridge backend). "
                                             " [default: 1]"),
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
    from cot_patching.runs import artifacts
    from cot_patching.mining.merge import merge_shards, merged_summary_line
    from cot_patching.problems import load_problems
    from cot_patching.mining.sharding import Shard, shard_problems
    from cot_patching.mining.workers import (failure_report, make_workers, mine_flags, parse_devices, run_workers,
                                      throughput_line)

    if options.shard is not None:
        raise ValueError("--devices makes its own shards; do not also give --shard")
    devices = parse_devices(devices_text)
    problems = load_problems(options.problems)
    counts = [len(shard_problems(problems, Shard(k, len(devices)))) for k in range(len(devices))]
    outdir = Path(options.outdir)
    workers = make_workers(mine_flags(options) + (["--overwrite"] if overwrite else []), devices, outdir, counts)
    typer.echo(f"{len(workers)} workers ({', '.join(devices)}); logs in {outdir / 'shards'}/shard-K.log")

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
    print_next_steps(outdir, artifacts.read_pairs(outdir / artifacts.PAIRS_FILE))


def run_mine(options: MineOptions, overwrite: bool = False, progress: bool = True) -> None:
    """Validate everything cheap first, then load the model and mine."""
    from cot_patching.runs import artifacts
    from cot_patching.mining import miner
    from cot_patching.models.backends import AUTO, resolve_backend
    from cot_patching.models.loading import load_model, resolve_model
    from cot_patching.problems import load_problems
    from cot_patching.decoding.sampling import parse_temperature_seq

    temperature_seq = parse_temperature_seq(options.temperature_seq)
    problems = load_problems(options.problems)
    if options.shard is not None:
        from cot_patching.mining.sharding import parse_shard, shard_problems

        problems = shard_problems(problems, parse_shard(options.shard))
    resumed_backend = None if overwrite else artifacts.recorded_backend(Path(options.outdir))
    backend = resolve_backend(resumed_backend if options.backend == AUTO and resumed_backend else options.backend)
    settings = miner.MineSettings(
        model=options.model,
        problems_sha256=miner.problems_sha256(options.problems),
        temperature_seq=temperature_seq,
        max_tries=options.max_tries,
        top_p=options.top_p,
        max_new_tokens=options.max_new_tokens,
        strict_format=options.strict_format,
        pair_unparsed=options.pair_unparsed,
        backend=backend,
        shard=options.shard,
        batch_size=options.batch_size,
    )
    resolve_model(options.model)
    miner.check_outdir(Path(options.outdir), settings, overwrite)
    loaded = load_model(options.model, device=options.device, dtype=options.dtype,
                        load_in_4bit=options.load_in_4bit, backend=backend)
    manifest = {
        "model": loaded.info.to_json(),
        "decode_path": loaded.decode_path,
        "environment": artifacts.environment_facts(),
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
    from cot_patching.runs import artifacts

    if not pairs:
        typer.echo(f"no pair yet in {outdir}: rerun the same command to resume, or give more problems / tries")
        return
    first = artifacts.load_pairs(outdir)[0]
    typer.echo(f"first pair: {first.id} (gold {first.pair.gold_answer}) in {outdir / artifacts.PAIRS_FILE}")
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
