"""`python -m cot_patching.cli` is `cot-patching`."""

from cot_patching.cli import main

main()
