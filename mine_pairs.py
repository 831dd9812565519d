"""The seed protocol's entry point: `python mine_pairs.py --problems ... --model ...` runs `cot-patching mine`."""

import typer

from cot_patching.cli.mine import mine_command

if __name__ == "__main__":
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    app.command()(mine_command)
    app()
