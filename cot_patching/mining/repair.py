"""Relabel a mining run under the current trace rules and set aside what a fresh run would not have written.

Token ids, prompts, seeds and text never change: everything else in a runs.jsonl line is derived from the token
ids (parse, spans, final answer, score), so it can be recomputed. After relabelling, each problem's attempts are
cut where the stop rule (SPEC §4) would have stopped; the attempts after that point, and any damaged line with the
attempts of its problem after it, go to `runs.set-aside.jsonl` (one JSON object per line, with the reason), never
deleted. A problem that lost its pair and still has tries left is reopened: resuming `mine` decodes the rest.
"""

from __future__ import annotations

import datetime
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cot_patching.mining.settings import MineSettings
from cot_patching.runs import artifacts
from cot_patching.runs.directory import RunDirectory, directory_lock
from cot_patching.runs.environment import environment_facts
from cot_patching.runs.files import ArtifactError, append_fsynced, atomic_write_text, drop_torn_tail
from cot_patching.runs.manifest import RunManifest
from cot_patching.runs.pairing import build_pairs
from cot_patching.runs.records import RunLine, RunRecord, read_runs, scan_runs
from cot_patching.runs.stop_rule import find_pair, problem_finished
from cot_patching.runs.tally import build_summary, write_derived
from cot_patching.traces.analysis import TRACE_RULES_VERSION, analyze_trace
from cot_patching.traces.prompt import question_of


@dataclass
class RepairReport:
    """What `repair_run` changed."""

    runs_before: int
    runs_after: int
    relabelled: int = 0  # lines whose label (correct / parse_ok / score rule / normalized answer) changed
    respanned: int = 0  # lines whose step or answer spans changed
    set_aside: list[str] = field(default_factory=list)  # "id attempt N: reason"
    reopened: list[str] = field(default_factory=list)  # problems a resume will mine further
    pairs_before: int = 0
    pairs_after: int = 0

    def to_json(self) -> dict[str, Any]:
        """The report as recorded in the manifest."""
        return asdict(self)


_LABEL_FIELDS = ("correct", "parse_ok", "score_rule", "normalized_answer", "final_answer")
_SPAN_FIELDS = ("step_spans", "final_answer_span")


def relabel(record: RunRecord, tokenizer: Any, strict: bool) -> RunRecord:
    """The record with every field derived from its token ids recomputed under the current rules."""
    if any(not isinstance(t, int) or not 0 <= t < len(tokenizer) for t in record.token_ids):
        raise ArtifactError(f"{record.id} attempt {record.attempt}: token id outside the vocabulary")
    trace = analyze_trace(tokenizer, record.token_ids, record.gold_answer, strict,
                          cut=record.finish_reason == "length")
    if trace.text != record.text:
        raise ArtifactError(
            f"{record.id} attempt {record.attempt}: decode(token_ids) differs from the recorded text; "
            "is this the run's tokenizer?"
        )
    return replace(record, **trace.record_fields())


def repair_run(outdir: str | Path, tokenizer: Any, argv: list[str] | None = None) -> RepairReport:
    """Relabel every attempt, apply the stop rule, set aside the rest, rewrite derived files and manifest."""
    root = Path(outdir)
    manifest = RunManifest.load(root)
    settings = MineSettings.recorded(manifest)
    strict, pair_unparsed, schedule = settings.strict_format, settings.pair_unparsed, settings.schedule
    runs_path = RunDirectory(root).runs_path
    with directory_lock(root):
        drop_torn_tail(runs_path)
        lines, damaged = _read_lines(runs_path)
        before_pairs = len(build_pairs([RunLine(0, r) for r in lines], {}, pair_unparsed, strict))
        report = RepairReport(runs_before=len(lines) + len(damaged), runs_after=0, pairs_before=before_pairs)
        aside: list[dict[str, Any]] = [{"reason": reason, "raw": raw} for raw, reason in damaged]
        report.set_aside += [reason for _, reason in damaged]
        kept: list[RunRecord] = []
        by_problem: dict[str, list[RunRecord]] = {}
        for record in lines:
            fresh = relabel(record, tokenizer, strict)
            report.relabelled += any(getattr(fresh, f) != getattr(record, f) for f in _LABEL_FIELDS)
            report.respanned += any(getattr(fresh, f) != getattr(record, f) for f in _SPAN_FIELDS)
            done = by_problem.setdefault(fresh.id, [])
            reason = None
            if find_pair(done, pair_unparsed) is not None:
                reason = f"made after the problem's pair was complete at attempt {done[-1].attempt}"
            elif fresh.attempt != len(done):
                reason = f"attempt {fresh.attempt} follows attempts {[r.attempt for r in done]}"
            if reason is not None:
                aside.append({"reason": reason, "record": asdict(fresh)})
                report.set_aside.append(f"{fresh.id} attempt {fresh.attempt}: {reason}")
                continue
            done.append(fresh)
            kept.append(fresh)
        for problem_id, records in by_problem.items():
            if not problem_finished(records, len(schedule), pair_unparsed):
                report.reopened.append(problem_id)
        questions = {r.id: question_of(r.prompt) or "" for r in kept}
        kept_lines, position = [], 0
        for record in kept:
            kept_lines.append(RunLine(position, record))
            position += len(record.to_line())
        pairs = build_pairs(kept_lines, questions, pair_unparsed, strict)
        report.runs_after, report.pairs_after = len(kept), len(pairs)
        # Crash safety: the set-aside lines, then the repair's record (marked incomplete), then the rewrite. A rerun
        # after a kill finds the incomplete record, keeps what it says changed (the rewritten runs.jsonl would
        # show no change) and finishes the writes, which give the same files again.
        _append_set_aside(RunDirectory(root).set_aside_path, aside)
        repairs = list(manifest.repairs)
        if repairs and isinstance(repairs[-1], dict) and repairs[-1].get("complete") is False:
            entry = repairs[-1]
        else:
            entry = {
                "trace_rules_version": TRACE_RULES_VERSION,
                "from_trace_rules_version": settings.trace_rules_version,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "argv": list(sys.argv if argv is None else argv),
                "environment": environment_facts()["versions"],
                "report": report.to_json(),
                "complete": False,
            }
            repairs.append(entry)
        manifest = replace(manifest, settings={**manifest.settings, "trace_rules_version": TRACE_RULES_VERSION},
                           repairs=tuple(repairs))
        manifest.save(root)
        atomic_write_text(runs_path, "".join(r.to_line().decode("utf-8") for r in kept))
        runs = read_runs(runs_path)
        write_derived(root, pairs, build_summary(runs, pairs))
        entry["complete"] = True  # the same dict as the manifest's last repair
        manifest.save(root)
        report = RepairReport(**entry["report"])
    return report


def _read_lines(path: Path) -> tuple[list[RunRecord], list[tuple[str, str]]]:
    """Every readable run record, and (raw text, reason) for each line that is not one."""
    records: list[RunRecord] = []
    damaged: list[tuple[str, str]] = []
    if not path.exists():
        return records, damaged
    for line in scan_runs(path):
        if line.record is None:
            damaged.append((line.raw.decode("utf-8", errors="replace"),
                            f"{artifacts.RUNS_FILE} line {line.number}: {'; '.join(line.problems)}"))
        else:
            records.append(line.record)
    return records, damaged


def _append_set_aside(path: Path, entries: list[dict[str, Any]]) -> None:
    """Append entries not already in the file (a rerun after a crash adds nothing twice), fsynced."""
    if not entries:
        return
    drop_torn_tail(path)  # a line cut by a full disk or a kill is not kept, and nothing follows it
    existing = set(path.read_text("utf-8").splitlines()) if path.exists() else set()
    lines = [json.dumps(e, ensure_ascii=False) for e in entries]
    new = [line for line in lines if line not in existing]
    if new:
        append_fsynced(path, "".join(line + "\n" for line in new))
