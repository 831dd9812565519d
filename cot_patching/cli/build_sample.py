"""`cot-patching build-sample`: write a deterministic sample of numeric-answer problems."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from cot_patching.cli.errors import clear_errors


def build_sample_command(
    out: str = typer.Option("data/problems.sample.json", help="Where to write the sample."),
    n: int = typer.Option(60, help="Number of problems."),
    source: str = typer.Option("gsm8k", help="gsm8k or svamp."),
    split: str = typer.Option("test", help="GSM8K split."),
    skip: int = typer.Option(0, help="Skip this many problems of the ranking first (for a second, disjoint sample)."),
    hub: bool = typer.Option(False, "--hub", help="Read the dataset through `datasets` instead of the vendored file."),
    stratify: str = typer.Option("", help="GSM8K difficulty buckets to draw round-robin from, e.g. 2,3,4,5+ (the "
                                 "reference solution's <<...>> calculation count; recorded as gold_steps)."),
) -> None:
    """Rank the dataset by sha256 of each id and keep the first `n` (after `skip`), optionally stratified."""
    from cot_patching.problems import (
        deterministic_sample,
        read_gsm8k,
        read_svamp,
        stratified_sample,
    )
    from cot_patching.runs.files import write_json

    with clear_errors():
        if n < 1 or skip < 0:
            raise ValueError(f"--n must be >= 1 and --skip >= 0, got --n {n} --skip {skip}")
        if source == "gsm8k":
            pool = read_gsm8k(split, offline=not hub)
        elif source == "svamp":
            pool = read_svamp(offline=not hub)
        else:
            raise ValueError(f"unknown --source {source!r}; choose gsm8k or svamp")
        buckets = [b.strip() for b in stratify.split(",") if b.strip()]
        unknown = [b for b in buckets if b not in ("1", "2", "3", "4", "5+")]
        if unknown:
            raise ValueError(f"--stratify buckets must be among 1,2,3,4,5+, got {', '.join(unknown)}")
        if buckets and source != "gsm8k":
            raise ValueError("--stratify needs --source gsm8k (SVAMP has no reference calculations)")
        if buckets:
            sample = stratified_sample(pool, n + skip, buckets)[skip:]
        else:  # unstratified samples stay byte-identical to those written before problems carried gold_steps
            sample = [replace(p, gold_steps=None) for p in deterministic_sample(pool, n + skip)[skip:]]
        if len(sample) < n:
            typer.echo(f"warning: the {source} pool has {len(pool)} problems: {len(sample)} left after --skip {skip}",
                       err=True)
        write_json(Path(out), [p.to_json() for p in sample])  # atomic: a kill leaves the old file or the new
        counts = {b: sum(1 for p in sample if p.difficulty == b) for b in buckets}
        typer.echo(f"wrote {len(sample)} {source} problems to {out}"
                   + (" (" + ", ".join(f"{b} steps: {c}" for b, c in counts.items()) + ")" if buckets else ""))
