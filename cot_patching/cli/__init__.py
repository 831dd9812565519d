"""The `cot-patching` command line: one module per command."""

from __future__ import annotations

import typer

from cot_patching.cli import (
    build_sample,
    cache_activations,
    localize,
    merge,
    mine,
    patch,
    repair,
    report,
    reproduce,
    validate,
)

app = typer.Typer(
    name="cot-patching",
    help="Mine correct/incorrect chain-of-thought pairs and cache activations for patching.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain text: "[default: 8]" must show, not be read as a style tag
)
app.command("mine")(mine.mine_command)
app.command("reproduce")(reproduce.reproduce_command)
app.command("build-sample")(build_sample.build_sample_command)
app.command("cache-activations")(cache_activations.cache_activations_command)
app.command("validate")(validate.validate_command)
app.command("repair")(repair.repair_command)
app.command("patch")(patch.patch_command)
app.command("report")(report.report_command)
app.command("merge")(merge.merge_command)
app.command("localize")(localize.localize_command)


def main() -> None:
    """Console-script entry point."""
    app()
