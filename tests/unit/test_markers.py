"""CI's split of the tests between its two lines (tests/conftest.py): which tests are marked transformer_lens, and the
guard that fails an unmarked test that reaches TransformerLens in a process it starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import _builds_models

TESTS = Path(__file__).resolve().parents[1]


def test_a_process_started_by_an_unmarked_test_cannot_import_transformer_lens():
    child = subprocess.run([sys.executable, "-c", "import transformer_lens"], capture_output=True, text=True)
    assert child.returncode == 1
    assert "not marked transformer_lens started a process that imports TransformerLens" in child.stderr
    other = subprocess.run([sys.executable, "-c", "import torch, transformers"], capture_output=True, text=True)
    assert other.returncode == 0, other.stderr  # only TransformerLens is refused


def test_modules_that_start_model_processes_are_marked_and_scripted_ones_are_not():
    assert _builds_models(TESTS / "acceptance" / "test_workers.py")  # mine --model embedded, in processes
    assert _builds_models(TESTS / "acceptance" / "test_resume.py")
    assert _builds_models(TESTS / "acceptance" / "test_slurm.py")
    assert _builds_models(TESTS / "integration" / "test_backends.py")  # builds models in process
    assert not _builds_models(TESTS / "acceptance" / "test_kill_campaign.py")  # scripted decoders only
    assert not _builds_models(TESTS / "unit" / "test_lock.py")


def test_the_quick_loop_skips_exactly_the_tests_that_build_a_model(request):
    items = request.session.items
    marked = {item.nodeid for item in items if item.get_closest_marker("transformer_lens")}
    slow = {item.nodeid for item in items if item.get_closest_marker("slow")}
    assert slow == marked
    assert request.node.nodeid not in slow  # this test builds nothing: it is in the quick loop
