"""The Slurm path end to end, on a real one-node cluster (Debian's slurm-wlm + munge), where one can be started."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEEDED = ("slurmctld", "slurmd", "sbatch", "munged")


@pytest.mark.skipif(any(shutil.which(tool) is None for tool in NEEDED) or os.geteuid() != 0,
                    reason="needs root and Debian's slurm-wlm + munge (apt-get install slurm-wlm munge)")
def test_slurm_array_of_shards_merges_to_the_single_process_run(tmp_path):
    result = subprocess.run([str(ROOT / "scripts/slurm-check.sh"), str(tmp_path / "slurm")], capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("runs.jsonl", "pairs.jsonl", "pairs_summary.csv", "summary.json"):
        assert f"{name}: merged == single process" in result.stdout
    assert "8/8 attempts reproduced exactly" in result.stdout
