"""What the report shows, read from a run directory's files only (runs, pairs, manifest, caches, patching tables)."""

from __future__ import annotations

import csv
import io
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cot_patching.runs import artifacts
from cot_patching.runs.directory import RunDirectory, load_pairs
from cot_patching.runs.files import read_json_file, read_jsonl_file, read_text_file
from cot_patching.runs.manifest import RunManifest
from cot_patching.runs.pairing import LoadedPair
from cot_patching.runs.records import RunRecord, read_runs
from cot_patching.traces.spans import Decoder, TokenOffsets


@dataclass(frozen=True)
class Chunk:
    """A piece of a trace's text: one token (with its id and logged log-probability) or, without a tokenizer, a
    run of characters; with the step it lies in and what it is."""

    text: str
    token_id: int | None
    logprob: float | None
    step_idx: int | None
    answer: bool
    selected: str | None  # "early" / "late" when the step is a selected one
    first_diff: bool

    def to_json(self) -> list[Any]:
        """Compact form for the page's data: [text, id, logprob, step, flags]."""
        flags = ("a" if self.answer else "") + ("d" if self.first_diff else "") + (self.selected or "")[:1]
        return [self.text, self.token_id, None if self.logprob is None or math.isnan(self.logprob) else
                round(self.logprob, 4), self.step_idx, flags]


def _step_at(record: RunRecord, token: int) -> int | None:
    for span in record.step_spans:
        if span["tok_start"] <= token < span["tok_end"]:
            return span["step_idx"]
    return None


def token_chunks(record: RunRecord, tokenizer: Decoder, selected: dict[int, str], first_diff: int | None
                 ) -> list[Chunk]:
    """One chunk per token: the characters it adds to the decoded text (a split character goes to the token that
    completes it)."""
    offsets = TokenOffsets.build(tokenizer, record.token_ids)
    answer = record.final_answer_span
    chunks = []
    for k, token_id in enumerate(record.token_ids):
        step = _step_at(record, k)
        in_answer = answer is not None and answer["tok_start"] <= k < answer["tok_end"]
        logprob = record.token_logprobs[k] if k < len(record.token_logprobs) else None
        chunks.append(Chunk(offsets.text[offsets.covered[k]:offsets.covered[k + 1]], token_id, logprob, step,
                            in_answer, selected.get(step) if step is not None else None, k == first_diff))
    return chunks


def char_chunks(record: RunRecord, selected: dict[int, str]) -> list[Chunk]:
    """Without a tokenizer: the text cut at step and answer boundaries (no per-token ids or log-probabilities)."""
    cuts = {0, len(record.text)}
    for span in record.step_spans:
        cuts |= {span["char_start"], span["char_end"]}
    if record.final_answer_span is not None:
        cuts |= {record.final_answer_span["char_start"], record.final_answer_span["char_end"]}
    bounds = sorted(cut for cut in cuts if 0 <= cut <= len(record.text))
    chunks = []
    for start, end in zip(bounds, bounds[1:]):
        step = next((s["step_idx"] for s in record.step_spans if s["char_start"] <= start < s["char_end"]), None)
        answer = record.final_answer_span
        in_answer = answer is not None and answer["char_start"] <= start < answer["char_end"]
        chunks.append(Chunk(record.text[start:end], None, None, step, in_answer,
                            selected.get(step) if step is not None else None, False))
    return chunks


def selected_steps(pair: LoadedPair, which: str, strict: bool) -> dict[int, str]:
    """step_idx -> "early"/"late" for one trace: the pair's selection on the correct trace, the same rule on the
    incorrect one."""
    chosen = pair.selected_steps(which, strict)
    if chosen is None:
        return {}
    early, late = chosen
    return {early: "early/late"} if early == late else {early: "early", late: "late"}


def reproduce_command(outdir: Path, record: RunRecord) -> str:
    """The exact command that replays one attempt."""
    return f"cot-patching reproduce --outdir {shlex.quote(str(outdir))} --id {shlex.quote(record.id)} " \
           f"--attempt {record.attempt}"


@dataclass
class RunView:
    """Everything the report renders, loaded from disk."""

    root: Path
    manifest: RunManifest
    summary: dict[str, Any]
    runs: list[RunRecord]
    pairs: list[LoadedPair]
    activation_index: list[dict[str, Any]] = field(default_factory=list)
    activation_config: dict[str, Any] = field(default_factory=dict)
    patching_rows: list[dict[str, Any]] = field(default_factory=list)
    patching_agreement: dict[str, Any] = field(default_factory=dict)
    heatmaps: list[Path] = field(default_factory=list)
    localization: dict[str, dict[str, Any]] = field(default_factory=dict)  # pair id -> k*, p_k curves


def read_localization(folder: Path) -> dict[str, dict[str, Any]]:
    """Per localized pair: k*, the forking index and both p_k curves ([step, p, low, high, n] rows)."""
    steps, summary = folder / artifacts.LOCALIZATION_STEPS_CSV, folder / artifacts.LOCALIZATION_SUMMARY_FILE
    if not (steps.is_file() and summary.is_file()):
        return {}
    per_pair = read_json_file(summary, dict).get("per_pair") or {}
    out = {pair_id: {**entry, "curves": {"correct": [], "incorrect": []}} for pair_id, entry in per_pair.items()}
    for row in csv.DictReader(io.StringIO(read_text_file(steps), newline="")):
        entry = out.get(row["pair_id"])
        if entry is None or row["trace"] not in entry["curves"]:
            continue
        entry["curves"][row["trace"]].append([int(row["step"])] + [float(row[k]) if row[k] else None
                                                                   for k in ("p", "low", "high")] + [int(row["n"])])
    return out


def load_run_view(root: str | Path) -> RunView:
    """Read a run directory (and its activation cache and patching study, if present) for the report."""
    root = Path(root)
    manifest = RunManifest.load(root)
    summary_path = RunDirectory(root).summary_path
    summary = read_json_file(summary_path, dict) if summary_path.is_file() else {}
    runs = [line.record for line in read_runs(RunDirectory(root).runs_path)]
    pairs = load_pairs(root) if (RunDirectory(root).pairs_path).is_file() else []
    view = RunView(root, manifest, summary, runs, pairs)
    cache = RunDirectory(root).activations_dir
    index = cache / artifacts.CACHE_INDEX_FILE
    if index.is_file():
        view.activation_index = [entry for entry in read_jsonl_file(index) if isinstance(entry, dict)]
        config = cache / artifacts.CACHE_CONFIG_FILE
        view.activation_config = read_json_file(config, dict) if config.is_file() else {}
    study = RunDirectory(root).patching_dir
    if (study / artifacts.PATCHING_RESULTS_CSV).is_file():
        view.patching_rows = list(csv.DictReader(io.StringIO(read_text_file(study / artifacts.PATCHING_RESULTS_CSV),
                                                             newline="")))
        agreement = study / artifacts.PATCHING_AGREEMENT_FILE
        view.patching_agreement = read_json_file(agreement, dict) if agreement.is_file() else {}
        view.heatmaps = sorted(study.glob("heatmap_*.png"))
    view.localization = read_localization(RunDirectory(root).localization_dir)
    return view
