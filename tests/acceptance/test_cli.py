from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cot_patching.cli import app
from cot_patching.models.backends import resolve_backend
from cot_patching.runs.files import ArtifactError
from cot_patching.runs.records import read_runs

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _problems(tmp_path, n=1):
    path = tmp_path / "problems.json"
    path.write_text(json.dumps([
        {"id": f"c{i}", "question": f"Ann has {i} pens and buys 2 more. How many pens?", "gold_answer": str(i + 2)}
        for i in range(n)
    ]))
    return path


def _mine(args):
    return runner.invoke(app, ["mine", "--no-progress", *args])


def test_mine_then_reproduce_on_a_local_model_directory(tiny_dir, tmp_path):
    outdir = tmp_path / "out"
    result = _mine(["--problems", str(_problems(tmp_path, 2)), "--model", str(tiny_dir), "--outdir", str(outdir),
                    "--max-tries", "3", "--max-new-tokens", "12", "--min-pairs", "1"])
    assert result.exit_code == 0, result.output
    assert "problems processed" in result.output
    for name in ("runs.jsonl", "pairs.jsonl", "pairs_summary.csv", "summary.json", "manifest.json"):
        assert (outdir / name).is_file(), name
    manifest = json.loads((outdir / "manifest.json").read_text())
    assert manifest["settings"]["schedule"] == [0.0, 0.9, 0.9]
    assert manifest["settings"]["backend"] == manifest["model"]["backend"] == resolve_backend(None)
    assert manifest["model"]["tokenizer_sha256"] and manifest["sessions"][0]["environment"]["versions"]["torch"]
    replay = runner.invoke(app, ["reproduce", "--outdir", str(outdir), "--id", "c1", "--attempt", "2"])
    assert replay.exit_code == 0, replay.output
    assert "MATCH (12/12 tokens)" in replay.output
    n_runs = len(read_runs(outdir / "runs.jsonl"))
    replay = runner.invoke(app, ["reproduce", "--outdir", str(outdir), "--all-runs"])
    assert replay.exit_code == 0 and f"{n_runs}/{n_runs} attempts reproduced exactly" in replay.output, replay.output
    # --all-pairs replays both refs of each pair line
    runs = read_runs(outdir / "runs.jsonl")
    pair = {"id": "c0", "problem": "", "gold_answer": "2", "n_attempts": 2,
            "correct_ref": {"attempt": 0, "runs_offset": runs[0].offset},
            "incorrect_ref": {"attempt": 1, "runs_offset": runs[1].offset},
            "steps_selected": {"early": {"from": "correct", "step_idx": 1}, "late": {"from": "correct", "step_idx": 1}},
            "decode_config": {}}
    (outdir / "pairs.jsonl").write_text(json.dumps(pair) + "\n")
    replay = runner.invoke(app, ["reproduce", "--outdir", str(outdir), "--all-pairs"])
    assert replay.exit_code == 0 and "2/2 attempts reproduced exactly" in replay.output, replay.output


def test_reproduce_fails_on_a_tampered_run(tiny_dir, tmp_path):
    outdir = tmp_path / "out"
    assert _mine(["--problems", str(_problems(tmp_path)), "--model", str(tiny_dir), "--outdir", str(outdir),
                  "--max-tries", "2", "--max-new-tokens", "8"]).exit_code == 0
    lines = (outdir / "runs.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    record["token_ids"][3] += 1
    lines[1] = json.dumps(record)
    (outdir / "runs.jsonl").write_text("\n".join(lines) + "\n")
    replay = runner.invoke(app, ["reproduce", "--outdir", str(outdir), "--id", "c0", "--attempt", "1"])
    assert replay.exit_code == 1 and "MISMATCH at token 3" in replay.output


@pytest.mark.parametrize("args, message", [
    (["--problems", "missing.json"], "problems file not found"),
    (["--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["--model", "./nowhere/model.gguf"], "does not exist"),
    (["--temperature-seq", "0.5,x"], "not a comma-separated list"),
    (["--top-p", "1.5"], "top_p must be a number in (0, 1]"),
    (["--max-tries", "0"], "--max-tries must be >= 1"),
    (["--device", "quantum"], "unknown device 'quantum'"),
    (["--max-new-tokens", "1000000000000"], "max_new_tokens must be an integer in 1..131072"),
    pytest.param(["--device", "cuda"], "no CUDA device is available", marks=pytest.mark.skipif(
        __import__("torch").cuda.is_available(), reason="this machine has CUDA")),
])
def test_bad_input_one_line_no_traceback_nothing_written(tmp_path, args, message):
    problems = _problems(tmp_path)
    outdir = tmp_path / "out"
    full = ["--problems", str(problems), "--model", "embedded", "--outdir", str(outdir), *args]
    result = runner.invoke(app, ["mine", *full])  # in process: the same code path as the console script, no start-up
    _assert_one_error_line(result.exit_code, result.output, message)
    assert not outdir.exists()


def _assert_one_error_line(exit_code: int, output: str, message: str) -> None:
    assert exit_code == 2, output
    assert [line for line in output.strip().splitlines() if line] == [f"error: {output.strip()[7:]}"], output
    assert message in output and "Traceback" not in output


def test_the_console_entry_point_prints_the_same_one_line(tmp_path):
    """One real process, so the in-process runner above cannot hide what a shell user sees."""
    outdir = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "cot_patching.cli", "mine", "--problems", str(_problems(tmp_path)),
                             "--model", "embedded", "--outdir", str(outdir), "--top-p", "1.5"], capture_output=True,
                            text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    _assert_one_error_line(result.returncode, result.stderr, "top_p must be a number in (0, 1]")
    assert result.stdout == "" and not outdir.exists()


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ('[{"id": "a", "question": "q"}]', "missing field(s) gold_answer"),
    ('[{"id": "a", "question": "q", "gold_answer": "5"}, {"id": "a", "question": "r", "gold_answer": "6"}]',
     "duplicate id 'a'"),
    ('[{"id": "a", "question": "q", "gold_answer": "five"}]', "'five' is not numeric"),
])
def test_bad_problem_files_one_line_nothing_written(tmp_path, content, message):
    problems = tmp_path / "bad.json"
    problems.write_text(content)
    outdir = tmp_path / "out"
    result = runner.invoke(app, ["mine", "--problems", str(problems), "--model", "embedded", "--outdir", str(outdir)])
    _assert_one_error_line(result.exit_code, result.output, message)
    assert not outdir.exists()


def test_cache_activations_command(tiny_dir, tmp_path):
    from helpers import mine_scripted_pairs

    from cot_patching.activations.cache import load_activations
    from cot_patching.models.loading import load_model

    results = tmp_path / "results"
    mine_scripted_pairs(load_model(str(tiny_dir), device="cpu"), results, n=2)
    args = ["cache-activations", "--results", str(results), "--layers", "0,1", "--hooks", "resid_pre,resid_post",
            "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "cached 2 pairs, 0 already cached" in result.output, result.output
    store = load_activations(results / "activations")
    assert len(store) == 2 * 2 * 2 * 2 * 2 and store.config["model"] == str(tiny_dir)
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "cached 0 pairs, 2 already cached" in result.output
    result = runner.invoke(app, [*args[:3], "--layers", "7", "--no-progress"])
    assert result.exit_code == 2 and "the model has layers 0..1" in result.output


def test_outdir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    result = _mine(["--problems", str(_problems(tmp_path)), "--model", "embedded", "--outdir", str(target)])
    assert result.exit_code == 2 and "not a directory" in result.output
    assert target.read_text() == "keep me"


def test_config_supplies_defaults_and_flags_override(tmp_path):
    from cot_patching.cli.mine import merge_options

    config = tmp_path / "c.yaml"
    config.write_text("model: embedded\nmax-tries: 3\ntemperature_seq: [0.0, 0.7]\n")
    options = merge_options({"max_tries": 5, "top_p": None}, str(config))
    assert (options.model, options.max_tries, options.temperature_seq, options.top_p) == ("embedded", 5, "0.0,0.7", 0.95)
    config.write_text("bogus: 1\n")
    with pytest.raises(ValueError, match="unknown option"):
        merge_options({}, str(config))


def test_committed_configs_are_valid():
    from cot_patching.cli.mine import merge_options

    for path in sorted((REPO / "configs").glob("*.yaml")):
        merge_options({}, str(path))


def test_build_sample_is_deterministic(tmp_path):
    out = tmp_path / "s.json"
    result = runner.invoke(app, ["build-sample", "--out", str(out), "--n", "60"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == (REPO / "data" / "problems.sample.json").read_bytes()


def test_mine_pairs_script_takes_the_seed_flags():
    result = subprocess.run([sys.executable, str(REPO / "mine_pairs.py"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--problems", "--model", "--outdir", "--max-tries", "--min-pairs", "--temperature-seq",
                 "--top-p", "--max-new-tokens", "--config"):
        assert flag in result.stdout


@pytest.fixture(scope="module")
def scripted_run(tiny_dir, tmp_path_factory):
    """A run of two scripted pairs of the tiny model saved on disk (so commands can load it again)."""
    from helpers import mine_scripted_pairs

    from cot_patching.models.loading import load_model

    results = tmp_path_factory.mktemp("run") / "results"
    mine_scripted_pairs(load_model(str(tiny_dir), device="cpu"), results, n=2)
    return results


def _copy_run(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def _one_error_line(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("damage, args, message", [
    (None, ["reproduce", "--all-pairs", "--device", "quantum"], "unknown device 'quantum'"),
    ("oov_prompt", ["reproduce", "--all-pairs"], "outside the model's vocabulary"),
    ("manifest_list", ["report"], "manifest.json is not a JSON object"),
    ("manifest_list", ["repair"], "manifest.json is not a JSON object"),
    (None, ["cache-activations", "--layers", "0,0", "--no-progress"], "names layer 0 more than once"),
    (None, ["patch", "--layers", "0,0", "--no-progress"], "names layer 0 more than once"),
    ("step_99", ["cache-activations", "--no-progress"], "has no step 99"),
])
def test_damaged_runs_and_bad_flags_get_one_error_line(scripted_run, tmp_path, damage, args, message):
    """Issue 32.6-32.8: one `error:` line naming what is wrong, exit 2, nothing half-written."""
    run = _copy_run(scripted_run, tmp_path)
    if damage == "oov_prompt":
        lines = (run / "runs.jsonl").read_text().splitlines()
        record = json.loads(lines[0])
        record["prompt_token_ids"][0] = 10**9
        lines[0] = json.dumps(record)
        (run / "runs.jsonl").write_text("\n".join(lines) + "\n")
    elif damage == "manifest_list":
        (run / "manifest.json").write_text("[1, 2]")
    elif damage == "step_99":
        pair = json.loads((run / "pairs.jsonl").read_text().splitlines()[0])
        pair["steps_selected"]["late"]["step_idx"] = 99
        rest = (run / "pairs.jsonl").read_text().splitlines()[1:]
        (run / "pairs.jsonl").write_text("\n".join([json.dumps(pair), *rest]) + "\n")
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    command, *rest = args
    where = ["--outdir" if command == "reproduce" else "--results", str(run)] if command in (
        "reproduce", "cache-activations", "patch") else [str(run)]
    _one_error_line([command, *where, *rest], message)
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == {k: v for k, v in before.items() if k.name != ".lock"}


def test_a_damaged_index_or_config_names_its_file_and_line(scripted_run, tmp_path):
    from cot_patching.activations.cache import load_activations

    run = _copy_run(scripted_run, tmp_path)
    result = runner.invoke(app, ["cache-activations", "--results", str(run), "--layers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    index = run / "activations" / "index.jsonl"
    entries = index.read_text().splitlines()
    entry = json.loads(entries[1])
    del entry["file"]
    index.write_text(entries[0] + "\n" + json.dumps(entry) + "\n")
    with pytest.raises(ArtifactError, match=r"index.jsonl:2: not an index entry"):
        load_activations(run / "activations")
    index.write_text(entries[0] + "\n{broken\n")
    with pytest.raises(ArtifactError, match=r"index.jsonl:2: not valid JSON"):
        load_activations(run / "activations")
    (run / "activations" / "cache_config.json").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ArtifactError, match=r"cache_config.json is not UTF-8"):
        load_activations(run / "activations")


def test_build_sample_refuses_a_negative_skip(tmp_path):
    _one_error_line(["build-sample", "--skip", "-1", "--out", str(tmp_path / "s.json")], "--skip >= 0")
    assert not (tmp_path / "s.json").exists()
