"""`cot-patching build-sample`: write a deterministic sample of numeric-answer problems."""

from __future__ import annotations

import typer

from cot_patching.cli.errors import clear_errors


def build_sample_command(
    out: str = typer.Option("data/problems.sample.json", help="Where to write the sample."),
    n: int = typer.Option(60, help="Number of problems."),
    source: str = typer.Option("gsm8k", help="gsm8k or svamp."),
    split: str = typer.Option("test", help="GSM8K split."),
    skip: int = typer.Option(0, help="Skip this many problems of the ranking first (for a second, disjoint sample)."),
    hub: bool = typer.Option(False, "--hub", help="Read the dataset through `datasets` instead of the vendored file."),
) -> None:
    """Rank the dataset by sha256 of each id and keep the first `n` (after `skip`)."""
    from cot_patching.problems import deterministic_sample, read_gsm8k, read_svamp, write_problems

    with clear_errors():
        if n < 1 or skip < 0:
            raise ValueError(f"--n must be >= 1 and --skip >= 0, got --n {n} --skip {skip}")
        if source == "gsm8k":
            pool = read_gsm8k(split, offline=not hub)
        elif source == "svamp":
            pool = read_svamp(offline=not hub)
        else:
            raise ValueError(f"unknown --source {source!r}; choose gsm8k or svamp")
        sample = deterministic_sample(pool, n + skip)[skip:]
        if len(sample) < n:
            typer.echo(f"warning: the {source} pool has {len(pool)} problems: {len(sample)} left after --skip {skip}",
                       err=True)
        write_problems(sample, out)
        typer.echo(f"wrote {len(sample)} {source} problems to {out}")
