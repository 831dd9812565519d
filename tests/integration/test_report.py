"""The HTML report: content, escaping of hostile run files, and a real headless browser where one is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from helpers import MULTI_STEP_CORRECT, ScriptedSampler, mine_scripted_pairs

from cot_patching.mining.miner import mine
from cot_patching.mining.settings import MineSettings
from cot_patching.problems import Problem
from cot_patching.report import load_run_view, render_report, write_report
from cot_patching.report.render import safe_json

HOSTILE_ID = 'q"><img src=x onerror=alert(1)>'
HOSTILE_WRONG = ("Step 1: </script><script>alert('pwned')</script> 3 * 4 = 12\n"
                 "Step 2: <b>bold</b> [link](javascript:alert(2)) &amp; 12\nFinal Answer: 12")


def _data(html: str) -> dict:
    blob = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S).group(1)
    return json.loads(blob)


@pytest.fixture(scope="module")
def small_run(tiny, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("run")
    mine_scripted_pairs(tiny, outdir, n=2)
    return outdir


@pytest.fixture(scope="module")
def hostile_run(tiny, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("hostile") / "run<i>x</i>"  # the directory name reaches the page too
    problems = [Problem(HOSTILE_ID, "Tom has <script>alert(3)</script> 3 apples and buys 4. How many?", "7")]
    settings = MineSettings(model=tiny.info.name, problems_sha256="x")
    sampler = ScriptedSampler(tiny.tokenizer, {HOSTILE_ID: [HOSTILE_WRONG, MULTI_STEP_CORRECT]})
    mine(problems, tiny, settings, outdir, manifest={"model": tiny.info.to_json()}, progress=False, sampler=sampler)
    return outdir


def test_report_shows_summary_pairs_tokens_and_commands(tiny, small_run):
    view = load_run_view(small_run)
    html = render_report(view, tiny.tokenizer)
    assert "Summary" in html and "pairs_found" in html and 'id="pair-viewer"' in html
    data = _data(html)
    assert [pair["id"] for pair in data["pairs"]] == ["q0", "q1"]
    pair = data["pairs"][0]
    correct, incorrect = pair["traces"]["correct"], pair["traces"]["incorrect"]
    record = view.pairs[0].correct
    assert "".join(chunk[0] for chunk in correct["chunks"]) == record.text  # tokens rebuild the text exactly
    assert [chunk[1] for chunk in correct["chunks"]] == record.token_ids
    assert correct["reproduce"] == f"cot-patching reproduce --outdir {small_run} --id q0 --attempt {record.attempt}"
    expected = view.pairs[0].pair.steps_selected
    assert correct["selected"] == {"early": expected["early"]["step_idx"], "late": expected["late"]["step_idx"]}
    assert sum("d" in chunk[4] for chunk in correct["chunks"]) == 1  # the first difference is marked once
    answer = "".join(chunk[0] for chunk in incorrect["chunks"] if "a" in chunk[4])
    assert answer.strip() == "12"
    steps = {chunk[3] for chunk in correct["chunks"] if chunk[3] is not None}
    assert steps == {1, 2, 3}
    assert len(data["attempts"]) == 4


def test_report_without_tokenizer_shows_steps_as_text(small_run):
    data = _data(render_report(load_run_view(small_run), None))
    record = load_run_view(small_run).pairs[0].incorrect
    chunks = data["pairs"][0]["traces"]["incorrect"]["chunks"]
    assert "".join(chunk[0] for chunk in chunks) == record.text and all(chunk[1] is None for chunk in chunks)


def test_hostile_run_is_shown_as_text_never_markup(tiny, hostile_run, tmp_path):
    html = render_report(load_run_view(hostile_run), tiny.tokenizer)
    lowered = html.lower()
    assert "<img" not in lowered  # no heatmaps in this run, so no image element at all
    assert "<script>alert" not in lowered
    assert "</script><script>" not in lowered
    assert "<img src=x" not in lowered
    assert "<b>bold</b>" not in lowered
    assert html.count("<script") == 2  # the JSON blob and the page's own script, nothing else
    data = _data(html)
    pair = data["pairs"][0]
    assert pair["id"] == HOSTILE_ID and "<script>alert(3)</script>" in pair["problem"]
    assert "".join(c[0] for c in pair["traces"]["incorrect"]["chunks"]) == HOSTILE_WRONG.rstrip()
    assert "run&lt;i&gt;x&lt;/i&gt;" in html and "<i>" not in lowered  # server-rendered parts are escaped


def test_safe_json_cannot_close_a_script_element():
    text = safe_json({"x": "</script><!-- & \u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"x": "</script><!-- & \u2028"}


def test_report_cli_writes_the_default_file(small_run):
    from typer.testing import CliRunner

    from cot_patching.cli import app

    result = CliRunner().invoke(app, ["report", str(small_run), "--no-tokens"])
    assert result.exit_code == 0, result.output
    assert (small_run / "report.html").is_file() and "2 pairs" in result.output
    bad = CliRunner().invoke(app, ["report", str(small_run / "missing")])
    assert bad.exit_code == 2 and "error:" in bad.output


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_headless_chromium_renders_the_pair_viewer(tiny, small_run, hostile_run, tmp_path):
    for run in (small_run, hostile_run):
        page = write_report(load_run_view(run), tmp_path / f"{run.parent.name}.html", tiny.tokenizer)
        flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
        dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                             check=True).stdout
        assert 'class="trace-box trace-correct"' in dom and 'class="trace-box trace-incorrect"' in dom
        assert dom.count('class="tok') > 20
        assert "<img src=\"x\"" not in dom and "<b>bold</b>" not in dom  # hostile text stayed text after JS ran
        shot = tmp_path / f"{run.parent.name}.png"
        subprocess.run(flags + ["--window-size=1400,1600", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, timeout=120, check=True)
        assert shot.stat().st_size > 10_000
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom  # the hostile id, as text


def test_report_of_a_real_embedded_model_run(embedded, tmp_path):
    """A run really mined by the embedded SmolLM2 (no scripted sampler) renders, every attempt in the table."""
    problems = [Problem("p0", "Tom has 3 apples and buys 4 more. How many apples does he have?", "7")]
    settings = MineSettings(model=embedded.info.name, problems_sha256="x", max_tries=2, max_new_tokens=16)
    mine(problems, embedded, settings, tmp_path / "run", manifest={"model": embedded.info.to_json()}, progress=False)
    view = load_run_view(tmp_path / "run")
    data = _data(render_report(view, embedded.tokenizer))
    assert [row[1] for row in data["attempts"]] == [0, 1]
    assert [row[7] for row in data["attempts"]] == [len(r.token_ids) for r in view.runs]
