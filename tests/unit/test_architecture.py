"""The import order (pyproject's import-linter contracts), ruff and mypy hold; an upward import is caught."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lint  # CI's own lint step (pytest -m lint); the test lines run -m "not lint"

REPO = Path(__file__).resolve().parents[2]


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    script = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True)


def test_import_layers_are_kept():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def _lint_with_import(tmp_path: Path, module: str, statement: str) -> subprocess.CompletedProcess[str]:
    """Lint a copy of the package in which `module` (a path under cot_patching/) ends with `statement`."""
    shutil.copytree(REPO / "cot_patching", tmp_path / "cot_patching")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    source = tmp_path / "cot_patching" / module
    source.write_text(source.read_text() + f"\n{statement}  # noqa: E402,F401\n")
    return _lint_imports(tmp_path)


def test_an_upward_import_breaks_the_contract(tmp_path):
    result = _lint_with_import(tmp_path, "traces/parsing.py", "from cot_patching.mining import miner")
    assert result.returncode != 0
    assert "cot_patching.traces.parsing -> cot_patching.mining.miner" in result.stdout, result.stdout


def test_an_upward_import_inside_a_part_breaks_the_contract(tmp_path):
    result = _lint_with_import(tmp_path, "mining/sharding.py", "from cot_patching.mining import merge")
    assert result.returncode != 0
    assert "modules inside a part: each imports only modules below it BROKEN" in result.stdout, result.stdout
    assert "cot_patching.mining.sharding -> cot_patching.mining.merge" in result.stdout, result.stdout


def test_the_report_may_not_reach_a_model_even_indirectly(tmp_path):
    """The report sits above the experiments in the layers, yet the forbidden contract stops a path to models."""
    result = _lint_with_import(tmp_path, "report/data.py", "from cot_patching.experiments import study")
    assert result.returncode != 0
    assert "the report imports nothing that loads or runs a model BROKEN" in result.stdout, result.stdout


def test_ruff_passes():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "cot_patching", "tests", "bench"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_passes():
    """The package type-checks (config: pyproject's [tool.mypy])."""
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


RUN_FILE_NAMES = ("RUNS_FILE", "PAIRS_FILE", "PAIRS_CSV", "SUMMARY_FILE", "MANIFEST_FILE", "SET_ASIDE_FILE",
                  "LOCK_FILE", "ACTIVATIONS_DIR", "PATCHING_DIR", "LOCALIZATION_DIR", "SHARDS_DIR", "REPORT_FILE")
RUN_FILE_LITERALS = ("runs.jsonl", "pairs.jsonl", "pairs_summary.csv", "manifest.json", "runs.set-aside.jsonl",
                     "activations", "patching", "localization", "shards", "report.html")


def hand_joined_run_paths(source: str) -> list[str]:
    """Lines that join a run's own file or folder onto a directory instead of asking RunDirectory for it."""
    import re

    joined = re.compile(r"/\s*(artifacts\.(%s)\b|\"(%s)\")" % ("|".join(RUN_FILE_NAMES),
                                                               "|".join(map(re.escape, RUN_FILE_LITERALS))))
    return [line.strip() for line in source.splitlines() if joined.search(line)]


def test_only_runs_joins_a_runs_paths():
    offenders = []
    for path in sorted((REPO / "cot_patching").rglob("*.py")):
        if path.parent.name != "runs":
            offenders += [f"{path.relative_to(REPO)}: {line}" for line in hand_joined_run_paths(path.read_text("utf-8"))]
    assert not offenders, "ask RunDirectory for these paths:\n" + "\n".join(offenders)
    # negative controls: both spellings of a hand-joined path are caught, a file of a study's own folder is not
    assert hand_joined_run_paths('x = root / artifacts.PAIRS_FILE\ny = out / "report.html"') == [
        "x = root / artifacts.PAIRS_FILE", 'y = out / "report.html"']
    assert hand_joined_run_paths("study / artifacts.PATCHING_RESULTS_CSV") == []
