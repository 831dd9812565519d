"""Matplotlib figures written as PNG and SVG, atomically and byte-identically from run to run."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from cot_patching.runs.files import atomic_write_bytes

SVG_HASH_SALT = "cot-patching"


def save_figure(fig: Any, stem: Path) -> list[Path]:
    """Write `fig` to `stem`.png and `stem`.svg (no timestamps, fixed SVG ids); the two paths."""
    import matplotlib

    paths = []
    for suffix in (".png", ".svg"):
        path = Path(stem).with_suffix(suffix)
        buffer = io.BytesIO()
        # a fixed salt: SVG element ids are otherwise random, and the same figure would differ run to run
        with matplotlib.rc_context({"svg.hashsalt": SVG_HASH_SALT}):
            fig.savefig(buffer, dpi=150, format=suffix[1:], metadata={"Date": None} if suffix == ".svg" else None)
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths
