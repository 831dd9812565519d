"""The seed protocol's entry point: `python mine_pairs.py --problems ... --model ...` runs `cot-patching mine`."""

import typer

from cot_patching.cli.mine import mine_command

if __name__ == "__main__":
    typer.run(mine_command)
