"""Turn expected failures into one clear line on stderr and a non-zero exit, no traceback."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import typer

from cot_patching.mining.miner import MiningError
from cot_patching.models.backends import BackendError
from cot_patching.models.loading import ModelLoadError
from cot_patching.problems import ProblemFileError
from cot_patching.runs.files import ArtifactError

EXPECTED_ERRORS = (ProblemFileError, ModelLoadError, BackendError, MiningError, ArtifactError, ValueError, OSError)


@contextmanager
def clear_errors() -> Iterator[None]:
    """Report an expected error as `error: ...` on stderr and exit 2."""
    try:
        yield
    except EXPECTED_ERRORS as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: everything written so far is kept; rerun the same command to resume",
                   err=True)
        raise typer.Exit(code=130) from None
