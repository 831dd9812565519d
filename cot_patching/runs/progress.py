"""A progress bar on stderr for the commands that run long (mine, localize, cache-activations, patch)."""

from __future__ import annotations

from typing import Any


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True, initial: int = 0) -> Any:
    """A tqdm bar on stderr, or None when progress is off."""
    if not enabled:
        return None
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

