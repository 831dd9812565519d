"""Thin entry point: `python cli.py COMMAND ...` is `cot-patching COMMAND ...`."""

from cot_patching.cli import main

if __name__ == "__main__":
    main()
