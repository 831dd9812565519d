"""The names of a run's files, the clean-up of a killed rewrite's temporaries, and which files of an activation cache
are ours (SPEC §6)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Iterable

from cot_patching.runs.files import ArtifactError

RUNS_FILE = "runs.jsonl"
PAIRS_FILE = "pairs.jsonl"
PAIRS_CSV = "pairs_summary.csv"
SUMMARY_FILE = "summary.json"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"
SET_ASIDE_FILE = "runs.set-aside.jsonl"
ACTIVATIONS_DIR = "activations"
PATCHING_DIR = "patching"  # `cot-patching patch`: the study's results.csv, settings, heatmaps
PATCHING_RESULTS_CSV = "results.csv"  # one row per (pair, direction, layer, step) cell
PATCHING_AGREEMENT_FILE = "agreement.json"  # patching against attribution patching
LOCALIZATION_DIR = "localization"  # `cot-patching localize`: rollouts.jsonl, steps.csv, forks.csv, summary.json
LOCALIZATION_STEPS_CSV = "steps.csv"  # p_k per step of each trace, with Wilson intervals and k*
LOCALIZATION_FORKS_CSV = "forks.csv"  # per forking token: its rollouts and score
LOCALIZATION_SUMMARY_FILE = "summary.json"  # per pair: k*, the forking index
SHARDS_DIR = "shards"  # `mine --devices`: one shard run per worker, and its log
CACHE_INDEX_FILE = "index.jsonl"
CACHE_CONFIG_FILE = "cache_config.json"
REPORT_FILE = "report.html"  # `cot-patching report`, by default
RUN_FILES = (RUNS_FILE, PAIRS_FILE, PAIRS_CSV, SUMMARY_FILE)  # what mine and merge write beside the manifest


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temp files a killed `atomic_write_bytes` left in `folder` (`.NAME.XXXX.tmp` of our files)."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        if path.is_file() and any(path.name.startswith(f".{name}.") for name in RUN_FILES + (MANIFEST_FILE,)):
            path.unlink()
            removed.append(path)
    legacy = Path(folder) / (RUNS_FILE + ".tmp")  # merge's own temp name before it used atomic_write_bytes
    if legacy.is_file():
        legacy.unlink()
        removed.append(legacy)
    return removed


def cache_file_name(pair_id: str) -> str:
    """A filesystem-safe, collision-free safetensors file name for a pair id."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", pair_id)[:80]
    return f"{safe}-{hashlib.sha256(pair_id.encode()).hexdigest()[:10]}.safetensors"


def owned_cache_files(cache_dir: Path, pair_ids: Iterable[str]) -> list[Path]:
    """The files of an activation cache that cache-activations wrote (for these pairs); refuse a folder holding
    anything else, so that `--overwrite` can never delete what it did not write."""
    cache_dir = Path(cache_dir)
    if not cache_dir.exists():
        return []
    if not cache_dir.is_dir():
        raise ArtifactError(f"{cache_dir} is not a directory")
    present = sorted(cache_dir.iterdir())
    if not present:
        return []
    if not (cache_dir / CACHE_CONFIG_FILE).is_file():
        raise ArtifactError(f"{cache_dir} is not an activation cache (no {CACHE_CONFIG_FILE}) and holds "
                            f"{present[0].name}: nothing was deleted; choose a new or empty folder")
    ours = {CACHE_CONFIG_FILE, CACHE_INDEX_FILE}
    names = [cache_file_name(pair_id) for pair_id in pair_ids]
    index = cache_dir / CACHE_INDEX_FILE
    if index.is_file():
        for line in index.read_text("utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("file"), str):
                names.append(entry["file"])
    for name in names:
        ours |= {name, str(Path(name).with_suffix(".tmp"))}
    temp = re.compile(rf"\.({re.escape(CACHE_CONFIG_FILE)}|{re.escape(CACHE_INDEX_FILE)})\..*\.tmp")
    foreign = [p for p in present if p.name not in ours and not temp.fullmatch(p.name)]
    if foreign:
        raise ArtifactError(f"{cache_dir} holds {foreign[0].name}, which cache-activations did not write: "
                            "nothing was deleted; move it or choose another folder")
    return [p for p in present if p.is_file()]
