"""Patching studies: alignment, the metric, controls (self-patch, full recovery, positions), resume, attribution."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from helpers import mine_scripted_pairs

from cot_patching.experiments.alignment import (
    ScoredTrace,
    cells_for,
    final_answer_cell,
    first_difference,
    position_cells,
    step_cell,
)
from cot_patching.experiments.attribution import ranks, recipient_gradients, spearman
from cot_patching.experiments.patching import run_rows_with_patches
from cot_patching.experiments.plots import bootstrap_mean
from cot_patching.experiments.study import StudyError, run_study
from cot_patching.experiments.sweep import (
    SweepSettings,
    cell_patches,
    pair_traces,
    patched_metrics,
    source_activations,
    sweep_direction,
    trace_metric,
)
from cot_patching.experiments.tables import RESULT_COLUMNS, layer_step_tensor, read_table
from cot_patching.runs.directory import load_pairs


@pytest.fixture(scope="module")
def results(tiny, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("results")
    mine_scripted_pairs(tiny, outdir, n=2)
    return outdir


@pytest.fixture(scope="module")
def traces(tiny, results):
    return pair_traces(tiny, load_pairs(results)[0])


def test_metric_is_gold_minus_wrong_logprob_sum(tiny, traces):
    trace = traces.traces["incorrect"]
    gold, wrong = trace.targets
    assert tiny.tokenizer.decode(gold).strip() == "7" and tiny.tokenizer.decode(wrong).strip() == "12"
    expected = 0.0
    for sign, targets in ((1, gold), (-1, wrong)):
        with torch.inference_mode():
            logits = tiny.logits(torch.tensor([trace.context + targets]))[0]
        logprobs = torch.log_softmax(logits.float(), -1)
        expected += sign * sum(float(logprobs[len(trace.context) - 1 + j, t]) for j, t in enumerate(targets))
    assert trace_metric(tiny, trace) == pytest.approx(expected, abs=1e-4)


def test_step_cells_cover_the_steps_tokens_on_real_tokenizers(any_tokenizer):
    """Every patched recipient position holds the step's own token; the source's too (real tokenizers)."""
    from cot_patching.traces.analysis import analyze_trace

    def record(text: str, attempt: int):
        from cot_patching.runs.records import RunRecord

        prompt = any_tokenizer("Question: Tom has 3 apples.", add_special_tokens=False)["input_ids"]
        ids = any_tokenizer(text, add_special_tokens=False)["input_ids"]
        analyzed = analyze_trace(any_tokenizer, ids, "7")
        return RunRecord(id="q", attempt=attempt, temperature=0.0, top_p=1.0, seed=0, model="m", prompt="p",
                         prompt_token_ids=prompt, token_ids=ids, max_new_tokens=64, finish_reason="stop", gold_answer="7",
                         **analyzed.record_fields())

    correct = record("Step 1: Tom has 3 apples.\n  - Step 2: He buys 4, so 3 + 4 = 7.\nFinal Answer: 7", 1)
    wrong = record("**Step 1:** Tom has three apples in all.\nStep 2: 3 * 4 = 12\nFinal Answer: 12", 0)
    recipient = ScoredTrace(wrong, list(wrong.prompt_token_ids) + wrong.token_ids[:wrong.final_answer_span["tok_start"]],
                            ([1], [1]))
    source = ScoredTrace(correct, list(correct.prompt_token_ids)
                         + correct.token_ids[:correct.final_answer_span["tok_start"]], ([1], [1]))
    for k in (1, 2):
        cell = step_cell(recipient, source, k)
        for trace, positions in ((recipient, cell.recipient[0]), (source, cell.source[0])):
            span = next(s for s in trace.record.step_spans if s["step_idx"] == k)
            tokens = trace.record.prompt_token_ids + trace.record.token_ids
            assert [tokens[p] for p in positions] == trace.record.token_ids[
                span["tok_start"]: span["tok_start"] + len(positions)]
        assert len(cell.recipient[0]) == min(span_len(recipient, k), span_len(source, k))
    with pytest.raises(ValueError, match="has no step 3"):
        step_cell(recipient, source, 3)


def span_len(trace: ScoredTrace, k: int) -> int:
    start, end = trace.step_range(k)
    return end - start


def test_positions_past_the_context_are_refused(traces):
    recipient, source = traces.direction("denoise")
    short = ScoredTrace(recipient.record, recipient.context[:recipient.prompt_len + 2], recipient.targets)
    with pytest.raises(ValueError, match="past its context"):
        step_cell(short, source, 1)


def test_self_patch_changes_nothing_bitwise(tiny, traces):
    """Patching a trace with its own activations, at every cell of every alignment, is bitwise a no-op."""
    trace = traces.traces["correct"]
    names = [f"blocks.{layer}.hook_{hook}" for layer in (0, 1) for hook in ("resid_pre", "resid_post")]
    acts = source_activations(tiny, trace, trace.targets, names)
    clean = run_rows_with_patches(tiny, trace.rows())
    cells = [c for alignment in ("step", "final_answer", "position") for c in cells_for(alignment, trace, trace)]
    assert len(cells) > 3
    for cell in cells:
        for hook in ("resid_pre", "resid_post"):
            for layer in (0, 1):
                patched = run_rows_with_patches(tiny, trace.rows(), cell_patches(cell, layer, hook, acts))
                assert torch.equal(patched, clean), (cell.alignment, cell.step_idx, hook, layer)
    metric = trace_metric(tiny, trace)
    patch_sets = [cell_patches(cell, 1, "resid_post", acts) for cell in cells]
    assert patched_metrics(tiny, trace, patch_sets, 1) == [metric] * len(cells)


def test_self_patch_control_fails_on_a_perturbed_source(tiny, traces):
    """Negative control: the same check sees a change when the source activations are perturbed."""
    trace = traces.traces["correct"]
    acts = source_activations(tiny, trace, trace.targets, ["blocks.0.hook_resid_post"])
    acts = {name: value + 1e-3 for name, value in acts.items()}
    cell = cells_for("step", trace, trace)[0]
    patched = run_rows_with_patches(tiny, trace.rows(), cell_patches(cell, 0, "resid_post", acts))
    assert not torch.equal(patched, run_rows_with_patches(tiny, trace.rows()))


def test_final_answer_at_last_layer_recovers_fully(tiny, traces):
    """final_answer alignment at the last layer's resid_post gives normalized = 1 when both traces score the same
    answer tokens (fp32, 1e-4)."""
    settings = SweepSettings(layers=(0, 1), alignments=("final_answer",))
    for direction in ("denoise", "noise"):
        recipient, source = traces.direction(direction)
        assert recipient.targets == source.targets  # same gap text: the precondition of the control
        result = sweep_direction(tiny, traces, direction, settings)
        last = next(row for row in result.rows if row.layer == 1)
        assert last.normalized == pytest.approx(1.0, abs=1e-4)
        first = next(row for row in result.rows if row.layer == 0)
        assert abs(first.normalized - 1.0) > 1e-3  # layer 0 alone does not carry everything


def test_batched_cells_equal_one_cell_per_forward(tiny, traces):
    one = sweep_direction(tiny, traces, "denoise", SweepSettings(layers=(0, 1), cells_per_forward=1))
    many = sweep_direction(tiny, traces, "denoise", SweepSettings(layers=(0, 1), cells_per_forward=5))
    assert len(one.rows) == len(many.rows) > 4
    for a, b in zip(one.rows, many.rows):
        assert a.metric_patched == pytest.approx(b.metric_patched, abs=1e-4)


def test_position_alignment_starts_at_the_first_difference(tiny, traces):
    recipient, source = traces.direction("denoise")
    first = first_difference(recipient.record.token_ids, source.record.token_ids)
    cells = position_cells(recipient, source)
    assert len(cells) == first + 1
    assert cells[-1].position == recipient.prompt_len + first
    assert first_difference([1, 2, 3], [1, 2, 4]) == 2 and first_difference([1, 2], [1, 2, 3]) == 2


def test_spearman_and_ranks():
    assert ranks([3.0, 1.0, 2.0, 2.0]) == [4.0, 1.0, 2.5, 2.5]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6*4/(5*24)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_attribution_matches_a_finite_difference_at_the_last_layer(tiny, traces):
    """At the last layer's resid_post the metric is smooth in the activation: grad . delta ~ the patch's effect
    for a small delta (the check fails for a wrong sign or position)."""
    recipient, source = traces.direction("denoise")
    name = "blocks.1.hook_resid_post"
    grads = recipient_gradients(tiny, recipient, [name])
    assert grads.metric == pytest.approx(trace_metric(tiny, recipient), abs=1e-4)
    cell = final_answer_cell(recipient, source)
    small = {name: grads.acts[name] + 1e-3 * torch.randn_like(grads.acts[name], generator=torch.Generator().manual_seed(0))}
    from cot_patching.experiments.attribution import cell_attribution

    estimate = sum(sum(row) for row in cell_attribution(cell, 1, "resid_post", grads,
                                                        {name: _rows_at(small[name], cell, recipient)}))
    patched = patched_metrics(tiny, recipient, [cell_patches(cell, 1, "resid_post",
                                                             {name: _rows_at(small[name], cell, recipient)})])[0]
    effect = patched - grads.metric
    assert abs(effect) > 1e-5
    assert estimate == pytest.approx(effect, rel=0.05, abs=1e-5)


def _rows_at(recipient_acts, cell, recipient):
    """A fake 'source' tensor whose source positions hold the given recipient-position values."""
    width = max(max(cell.source[0]), max(cell.source[1])) + 1
    out = torch.zeros(2, width, recipient_acts.shape[-1])
    for row in range(2):
        out[row, list(cell.source[row])] = recipient_acts[row, list(cell.recipient[row])]
    return out


def test_study_writes_tables_resumes_and_refuses_other_settings(tiny, results, tmp_path):
    out = tmp_path / "patching"
    settings = SweepSettings(layers=(0, 1), alignments=("step", "final_answer", "position"))
    report = run_study(tiny, results, out, settings, tiny.info.to_json(), progress=False, plots=False)
    assert report.units_done == 4 and report.units_skipped == 0
    rows = read_table(out / "results.csv")
    assert list(rows[0]) == list(RESULT_COLUMNS)
    for row in rows:
        expected = (row["metric_patched"] - row["metric_recipient"]) / (row["metric_source"] - row["metric_recipient"])
        assert row["normalized"] == pytest.approx(expected, rel=1e-12)
    assert {row["alignment"] for row in rows} == {"step", "final_answer", "position"}
    tensor, layers, steps = layer_step_tensor(rows, rows[0]["pair_id"], "denoise")
    assert tensor.shape == (2, 3) and layers == [0, 1] and steps == [1, 2, 3]
    by_position, _, positions = layer_step_tensor(rows, rows[0]["pair_id"], "denoise", alignment="position")
    assert by_position.shape == (2, len(positions)) and not torch.isnan(by_position).any()
    first_bytes = (out / "results.csv").read_bytes()
    attribution_rows = read_table(out / "attribution.csv")
    assert len(attribution_rows) >= len(rows)
    assert (out / "agreement.json").is_file()

    again = run_study(tiny, results, out, settings, tiny.info.to_json(), progress=False, plots=False)
    assert again.units_done == 0 and again.units_skipped == 4
    assert (out / "results.csv").read_bytes() == first_bytes
    with pytest.raises(StudyError, match="different sweep"):
        run_study(tiny, results, out, replace(settings, layers=(1,)), tiny.info.to_json(), progress=False,
                  plots=False)
    with pytest.raises(StudyError, match="no pair nope"):
        run_study(tiny, results, out, settings, tiny.info.to_json(), pair_ids=["nope"], progress=False, plots=False)

    # a torn unit (bytes past the last progress line) is cut and redone: the same bytes as an uninterrupted run
    with open(out / "results.csv", "a") as handle:
        handle.write("q0,denoise,resid_post,0,st")
    lines = (out / "progress.jsonl").read_text().splitlines()
    (out / "progress.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    redo = run_study(tiny, results, out, settings, tiny.info.to_json(), progress=False, plots=False)
    assert redo.units_done == 1
    assert (out / "results.csv").read_bytes() == first_bytes


def test_heatmaps_and_bootstrap(tiny, results, tmp_path):
    out = tmp_path / "patching"
    run_study(tiny, results, out, SweepSettings(layers=(0, 1)), tiny.info.to_json(), progress=False,
              attribution=False)
    names = sorted(path.name for path in out.iterdir() if path.name.startswith("heatmap_"))
    assert names == sorted(f"heatmap_{d}_resid_post_{kind}.{ext}" for d in ("denoise", "noise")
                           for kind in ("mean", "pairs") for ext in ("png", "svg"))
    mean, low, high = bootstrap_mean([0.0, 1.0, 0.5, 0.25])
    assert mean == pytest.approx(0.4375) and 0.0 <= low <= mean <= high <= 1.0
    assert math.isnan(bootstrap_mean([0.3])[1])


def test_patch_cli_refuses_bad_flags_before_loading(results, tmp_path):
    from typer.testing import CliRunner

    from cot_patching.cli import app

    runner = CliRunner()
    for args, message in ((["--alignments", "steps"], "unknown alignment"),
                          (["--directions", "both"], "unknown direction"),
                          (["--pairs", "nope"], "no pair nope"),
                          (["--batch-cells", "0"], "positive integer")):
        result = runner.invoke(app, ["patch", "--results", str(results), *args])
        assert result.exit_code == 2, result.output
        assert message in result.output


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def test_patch_never_touches_a_folder_that_is_not_its_study(tiny, results, tmp_path):
    """Issue 32.1/32.2: a foreign results.csv is not truncated, and --overwrite deletes only what the study lists."""
    from typer.testing import CliRunner

    from cot_patching.cli import app

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "results.csv").write_text("".join(f"row {i}\n" for i in range(1000)))
    (foreign / "heatmap_mine.png").write_bytes(b"a user's figure")
    before = _files(foreign)
    settings = SweepSettings(layers=(0,), alignments=("final_answer",), directions=("noise",))
    for overwrite in (False, True):
        with pytest.raises(StudyError, match="not a patching study of ours and nothing was changed"):
            run_study(tiny, results, foreign, settings, tiny.info.to_json(), progress=False, plots=False,
                      overwrite=overwrite)
        assert _files(foreign) == before
    for args in ([], ["--overwrite"]):  # the CLI refuses before loading a model
        result = CliRunner().invoke(app, ["patch", "--results", str(results), "--out", str(foreign), "--layers", "0",
                                          "--no-attribution", "--no-plots", *args])
        assert result.exit_code == 2 and "nothing was changed" in result.output, result.output
        assert _files(foreign) == before
    (foreign / "settings.json").write_text('{"not": "a study"}')
    with pytest.raises(StudyError, match="no 'study' entry"):
        run_study(tiny, results, foreign, settings, tiny.info.to_json(), progress=False, overwrite=True)

    study = tmp_path / "study"
    run_study(tiny, results, study, settings, tiny.info.to_json(), progress=False, attribution=False)
    listed = json.loads((study / "settings.json").read_text())["files"]
    assert listed and all(name.startswith("heatmap_noise_") for name in listed)
    (study / "notes.txt").write_text("mine")
    (study / "heatmap_custom.png").write_bytes(b"mine too")
    run_study(tiny, results, study, settings, tiny.info.to_json(), progress=False, attribution=False,
              overwrite=True)
    assert (study / "notes.txt").read_text() == "mine" and (study / "heatmap_custom.png").read_bytes() == b"mine too"


def test_heatmap_files_are_byte_identical_run_to_run(tiny, results, tmp_path):
    """Issue 32.9: the SVGs (and PNGs) of the same study are the same bytes."""
    settings = SweepSettings(layers=(0,), alignments=("final_answer",), directions=("noise",))
    for name in ("a", "b"):
        run_study(tiny, results, tmp_path / name, settings, tiny.info.to_json(), progress=False, attribution=False)
    heatmaps = sorted(p.name for p in (tmp_path / "a").glob("heatmap_*"))
    assert any(name.endswith(".svg") for name in heatmaps)
    for name in heatmaps:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_shuffled_pair_null_and_kstar_only_steps(tiny, results, tmp_path):
    out = tmp_path / "patching"
    settings = SweepSettings(layers=(0, 1), directions=("denoise", "denoise_shuffled"))
    run_study(tiny, results, out, settings, tiny.info.to_json(), progress=False, attribution=False)
    rows = read_table(out / "results.csv")
    real = {(r["pair_id"], r["layer"], r["alignment"], r["step_idx"]): r for r in rows if r["direction"] == "denoise"}
    null = [r for r in rows if r["direction"] == "denoise_shuffled"]
    assert null and len(null) == len(real)
    for row in null:  # normalized by the pair's own gap; the source is the other pair's correct trace
        twin = real[(row["pair_id"], row["layer"], row["alignment"], row["step_idx"])]
        assert row["metric_source"] == twin["metric_source"] and row["metric_recipient"] == twin["metric_recipient"]
    assert any(row["metric_patched"] != real[(row["pair_id"], row["layer"], row["alignment"], row["step_idx"])][
        "metric_patched"] for row in null)  # another pair's activations are not the pair's own
    table = (out / "null_comparison.csv").read_text().splitlines()
    assert table[0].startswith("hook,layer,column,n_real") and len(table) > 1
    assert "null_comparison.csv" in json.loads((out / "settings.json").read_text())["files"]
    assert any(p.name == "heatmap_denoise_shuffled_resid_post_mean.png" for p in out.iterdir())
    with pytest.raises(StudyError, match="at least 2 pairs"):
        run_study(tiny, results, tmp_path / "one", settings, tiny.info.to_json(), pair_ids=["q0"], progress=False,
                  attribution=False, plots=False)
    only = tmp_path / "kstar"
    run_study(tiny, results, only, SweepSettings(layers=(0,), only_steps={"q0": 2, "q1": None}),
              tiny.info.to_json(), progress=False, attribution=False, plots=False)
    steps = {(r["pair_id"], r["step_idx"]) for r in read_table(only / "results.csv") if r["alignment"] == "step"}
    assert steps == {("q0", 2)}
