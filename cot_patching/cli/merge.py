"""`cot-patching merge`: shard directories into the one directory a single process would have written."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from cot_patching.cli.errors import clear_errors


def merge_command(
    out: str = typer.Argument(..., help="The merged directory (new, or an earlier merge of the same shards)."),
    shards: List[str] = typer.Argument(..., help="The shard directories (`mine --shard K/N`)."),
    problems: Optional[str] = typer.Option(None, help="The problem file, if not at the path the shards recorded."),
    partial: bool = typer.Option(False, "--partial", help="Merge what is finished and say what is missing."),
) -> None:
    """Merge shards: runs.jsonl byte for byte in problem order, pairs and summary rebuilt, --min-pairs applied."""
    from cot_patching.mining.merge import merge_shards, merged_summary_line

    with clear_errors():
        report = merge_shards(out, shards, problems_path=problems, partial=partial, argv=sys.argv)
        typer.echo(merged_summary_line(report) + f" -> {out}")
        for line in report.missing:
            typer.echo(f"missing: {line}", err=True)
