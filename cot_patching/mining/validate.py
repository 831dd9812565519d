"""Check every SPEC §6 invariant of a mining output directory and list each violation with its line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cot_patching.decoding.batched import BatchLayout
from cot_patching.decoding.sampling import attempt_seed, temperature_schedule
from cot_patching.runs import artifacts
from cot_patching.runs.directory import RunDirectory
from cot_patching.runs.files import ArtifactError
from cot_patching.runs.manifest import RunManifest
from cot_patching.runs.pairing import build_pairs, group_by_problem, steps_selected
from cot_patching.runs.records import PairRecord, RunLine, RunRecord, pair_problem, scan_runs
from cot_patching.runs.stop_rule import first_attempt_after_pair
from cot_patching.runs.tally import build_summary, pairs_csv
from cot_patching.traces.analysis import TRACE_RULES_VERSION, analyze_trace, judge_text
from cot_patching.traces.parsing import parse_trace, select_steps
from cot_patching.traces.prompt import encode_prompt, question_of
from cot_patching.traces.spans import TokenOffsets


@dataclass(frozen=True)
class Violation:
    """One broken invariant: which file, which line (1-based, 0 for the whole file), what is wrong."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


def validate_outdir(outdir: str | Path, tokenizer: Any | None = None) -> list[Violation]:
    """All violations in an outdir; token checks need the run's `tokenizer` (skipped when None)."""
    root = Path(outdir)
    found: list[Violation] = []
    manifest = _read_manifest(root, found)
    settings = manifest.settings if manifest else {}
    if manifest and settings["trace_rules_version"] != TRACE_RULES_VERSION:
        found.append(Violation(artifacts.MANIFEST_FILE, 0,
                               f"labelled with trace rules version {settings['trace_rules_version']}, "
                               f"this validator checks version {TRACE_RULES_VERSION}: run `cot-patching repair "
                               f"{root}` (token ids never change)"))
    runs = _read_runs(root, found)
    schedule = temperature_schedule(settings["temperature_seq"], settings["max_tries"]) if settings else None
    revision = manifest.model.revision if manifest else None
    run_settings = {**settings, "model": manifest.attempt_model} if manifest else {}
    for number, line in enumerate(runs, start=1):
        try:
            messages = _check_run(line.record, run_settings, schedule, tokenizer)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as err:
            messages = [f"{line.record.id} attempt {line.record.attempt}: malformed record ({type(err).__name__}: "
                        f"{err})"]
        if revision and line.record.model_revision != revision:
            messages.append(f"{line.record.id} attempt {line.record.attempt}: model_revision "
                            f"{line.record.model_revision!r} differs from the manifest's {revision!r}")
        found += [Violation(artifacts.RUNS_FILE, number, m) for m in messages]
    found += _check_attempt_order(runs, settings)
    found += _check_batches(runs, settings)
    pairs = _check_pairs(root, runs, settings, found)
    found += _check_derived(root, runs, pairs)
    found += _check_set_aside(root)
    return found


def _check_set_aside(root: Path) -> list[Violation]:
    """runs.set-aside.jsonl (written by repair): whole lines, each a JSON object with its reason and what it holds."""
    path = RunDirectory(root).set_aside_path
    if not path.is_file():
        return []
    data = path.read_bytes()
    out: list[Violation] = []
    lines = data.split(b"\n")
    if lines[-1]:
        out.append(Violation(artifacts.SET_ASIDE_FILE, len(lines), "torn last line (no newline): rerun "
                             f"`cot-patching repair {root}`, which drops it"))
    for number, raw in enumerate(lines[:-1], start=1):
        try:
            entry = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            out.append(Violation(artifacts.SET_ASIDE_FILE, number, f"not valid JSON ({err})"))
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("reason"), str) or \
                not ("record" in entry or "raw" in entry):
            out.append(Violation(artifacts.SET_ASIDE_FILE, number, "not a set-aside entry (reason and record or raw)"))
    return out


def _read_manifest(root: Path, found: list[Violation]) -> RunManifest | None:
    try:
        return RunManifest.load(root)
    except ArtifactError as err:
        found.append(Violation(artifacts.MANIFEST_FILE, 0, str(err)))
        return None


def _read_runs(root: Path, found: list[Violation]) -> list[RunLine]:
    path = RunDirectory(root).runs_path
    if not path.is_file():
        found.append(Violation(artifacts.RUNS_FILE, 0, "missing"))
        return []
    runs: list[RunLine] = []
    for line in scan_runs(path):
        if line.record is None:
            found += [Violation(artifacts.RUNS_FILE, line.number, m) for m in line.problems]
        else:
            runs.append(RunLine(line.offset, line.record))
    return runs


def _check_run(record: RunRecord, settings: dict[str, Any], schedule: list[float] | None,
               tokenizer: Any | None) -> list[str]:
    out = []
    where = f"{record.id} attempt {record.attempt}"
    if record.seed != attempt_seed(record.id, record.attempt):
        out.append(f"{where}: seed {record.seed} is not sha256('{record.id}:{record.attempt}')")
    if schedule is not None:
        if not 0 <= record.attempt < len(schedule):
            out.append(f"{where}: attempt index outside the schedule of {len(schedule)}")
        elif record.temperature != schedule[record.attempt]:
            out.append(f"{where}: temperature {record.temperature}, schedule says {schedule[record.attempt]}")
    for name in ("top_p", "max_new_tokens", "model"):
        if settings and getattr(record, name) != settings.get(name):
            out.append(f"{where}: {name} {getattr(record, name)!r} differs from the run settings")
    if len(record.token_ids) > record.max_new_tokens:
        out.append(f"{where}: {len(record.token_ids)} tokens exceed max_new_tokens")
    if record.finish_reason not in ("stop", "length", "error") or (record.finish_reason == "error") != (
        isinstance(record.error, str) and bool(record.error)
    ):
        out.append(f"{where}: finish_reason {record.finish_reason!r} is not 'stop' or 'length', or 'error' with "
                   "its error")
    if record.error is not None and record.token_ids:
        out.append(f"{where}: an attempt that failed has token ids")
    if record.token_logprobs and (len(record.token_logprobs) != len(record.token_ids) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and x <= 0 for x in record.token_logprobs
    )):
        out.append(f"{where}: token_logprobs are not one log-probability (<= 0) per token")
    strict = bool(settings.get("strict_format"))
    if tokenizer is not None:
        out += _check_tokens(record, tokenizer, strict)
    else:
        out += _check_text_spans(record, strict)
    return out


def _check_text_spans(record: RunRecord, strict: bool) -> list[str]:
    out = []
    verdict = judge_text(record.text, record.gold_answer, strict=strict, cut=record.finish_reason == "length")
    for span in record.step_spans:
        text = record.text[span["char_start"]:span["char_end"]]
        if text != span["text"]:
            out.append(f"step {span['step_idx']}: text differs from text[char_start:char_end]")
        if text[:1].isspace() or text[-1:].isspace() or not text:
            out.append(f"step {span['step_idx']}: span [{span['char_start']}, {span['char_end']}) starts or ends "
                       "on whitespace")
    if [(s.char_start, s.char_end) for s in verdict.parsed.steps] != [
        (s["char_start"], s["char_end"]) for s in record.step_spans
    ]:
        out.append("step spans differ from a fresh parse of text")
    if verdict.parsed.final_answer != record.final_answer or verdict.parse_ok != record.parse_ok:
        out.append("final_answer/parse_ok differ from a fresh parse of text")
    if verdict.parsed.strict_format_ok != record.strict_format_ok:
        out.append(f"strict_format_ok is {record.strict_format_ok}, the seed regexes say {verdict.parsed.strict_format_ok}")
    if (verdict.correct, verdict.score.rule, verdict.score.normalized) != (
        record.correct, record.score_rule, record.normalized_answer
    ):
        out.append(f"label (correct, rule, normalized) is {(record.correct, record.score_rule, record.normalized_answer)}"
                   f", the answer scores {(verdict.correct, verdict.score.rule, verdict.score.normalized)}")
    return out


def _check_tokens(record: RunRecord, tokenizer: Any, strict: bool) -> list[str]:
    out = _check_text_spans(record, strict)
    vocab = len(tokenizer)
    for name in ("token_ids", "prompt_token_ids"):
        bad = [t for t in getattr(record, name) if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab]
        if bad:
            out.append(f"{name} has {len(bad)} id(s) outside the vocabulary of {vocab} (first {bad[0]!r})")
            return out
    prompt = encode_prompt(tokenizer, record.prompt)
    if (prompt.token_ids, prompt.chat_template_applied) != (record.prompt_token_ids, record.chat_template_applied):
        out.append("prompt_token_ids / chat_template_applied are not what the tokenizer makes of prompt")
    offsets = TokenOffsets.build(tokenizer, record.token_ids)
    trace = analyze_trace(tokenizer, record.token_ids, record.gold_answer, strict, offsets,
                          cut=record.finish_reason == "length")
    if trace.text != record.text:
        out.append("text != decode(token_ids)")
        return out
    for span in record.step_spans:
        try:
            expected = offsets.span(span["char_start"], span["char_end"])
        except ValueError as err:
            out.append(f"step {span['step_idx']}: {err}")
            continue
        if (span["tok_start"], span["tok_end"]) != expected:
            out.append(f"step {span['step_idx']}: tokens [{span['tok_start']}, {span['tok_end']}) are not the "
                       f"smallest cover [{expected[0]}, {expected[1]})")
    recorded = record.final_answer_span
    fresh = trace.final_answer_span
    if (recorded is None) != (fresh is None) or (
        fresh is not None and recorded is not None
        and (recorded.get("tok_start"), recorded.get("tok_end")) != (fresh.tok_start, fresh.tok_end)
    ):
        out.append("final_answer_span is not the smallest token cover of the final answer")
    return out


def _check_batches(runs: list[RunLine], settings: dict[str, Any]) -> list[Violation]:
    """Batched attempts: a valid layout, of the run's batch size, one group's attempts sharing its shape in distinct
    slots, each prompt within the group's width and the cache holding every new token."""
    out: list[Violation] = []
    size = settings["batch_size"] if settings else None
    groups: dict[tuple[str | None, int], list[tuple[int, BatchLayout]]] = {}
    for number, line in enumerate(runs, start=1):
        record = line.record
        where = f"{record.id} attempt {record.attempt}"
        if record.batch is None:
            if size not in (None, 1):
                out.append(Violation(artifacts.RUNS_FILE, number, f"{where}: no batch layout in a run mined with "
                                                                  f"batch size {size}"))
            continue
        try:
            layout = BatchLayout.from_json(record.batch)
        except ValueError as err:
            out.append(Violation(artifacts.RUNS_FILE, number, f"{where}: {err}"))
            continue
        if size is not None and layout.size != size:
            out.append(Violation(artifacts.RUNS_FILE, number, f"{where}: decoded in a batch of {layout.size}, the "
                                                              f"run's batch size is {size}"))
        if len(record.prompt_token_ids) > layout.width or layout.width + record.max_new_tokens > layout.cache_len:
            out.append(Violation(artifacts.RUNS_FILE, number, f"{where}: its prompt of {len(record.prompt_token_ids)}"
                                 f" tokens and {record.max_new_tokens} new tokens do not fit width {layout.width}, "
                                 f"cache {layout.cache_len}"))
        groups.setdefault(layout.group_key, []).append((number, layout))
    for (shard, group), members in groups.items():
        first_line, first = members[0]
        group_name = f"batch group {group}" + (f" of shard {shard}" if shard else "")
        shape = (first.size, first.width, first.cache_len, first.path, first.rows)
        if any((m.size, m.width, m.cache_len, m.path, m.rows) != shape for _, m in members):
            out.append(Violation(artifacts.RUNS_FILE, first_line, f"{group_name}: attempts disagree on its "
                                                                  "size, width, cache, path or rows"))
        slots = [m.slot for _, m in members]
        if len(set(slots)) != len(slots) or len(members) > first.rows:
            out.append(Violation(artifacts.RUNS_FILE, first_line, f"{group_name}: slots {slots} are not "
                                                                  f"distinct or exceed its {first.rows} rows"))
    return out


def _check_attempt_order(runs: list[RunLine], settings: dict[str, Any]) -> list[Violation]:
    out = []
    pair_unparsed = bool(settings.get("pair_unparsed"))
    line_of = {id(line): n for n, line in enumerate(runs, start=1)}
    revisions = {line.record.model_revision for line in runs}
    if len(revisions) > 1:
        out.append(Violation(artifacts.RUNS_FILE, 0, f"attempts record several model revisions: {sorted(map(str, revisions))}"))
    for problem_id, lines in group_by_problem(runs).items():
        for field_name in ("gold_answer", "prompt", "prompt_token_ids"):
            if len({json.dumps(getattr(line.record, field_name)) for line in lines}) > 1:
                out.append(Violation(artifacts.RUNS_FILE, line_of[id(lines[0])],
                                     f"{problem_id}: attempts disagree on {field_name}"))
        attempts = [line.record.attempt for line in lines]
        if attempts != list(range(len(attempts))):
            out.append(Violation(artifacts.RUNS_FILE, line_of[id(lines[0])],
                                 f"{problem_id}: attempts {attempts} are not 0..{len(attempts) - 1} in order"))
        late = first_attempt_after_pair([line.record for line in lines], pair_unparsed)
        if late is not None:
            out.append(Violation(artifacts.RUNS_FILE, line_of[id(lines[late])],
                                 f"{problem_id}: attempt {lines[late].record.attempt} made after a pair was found"))
    return out


def _check_pairs(root: Path, runs: list[RunLine], settings: dict[str, Any],
                 found: list[Violation]) -> list[PairRecord]:
    path = RunDirectory(root).pairs_path
    if not path.is_file():
        found.append(Violation(artifacts.PAIRS_FILE, 0, "missing"))
        return []
    by_offset = {line.offset: line.record for line in runs}
    pairs = []
    for number, text in enumerate(path.read_text("utf-8", errors="replace").splitlines(), start=1):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            found.append(Violation(artifacts.PAIRS_FILE, number, f"not valid JSON ({err.msg})"))
            continue
        problem = pair_problem(data)
        if problem:
            found.append(Violation(artifacts.PAIRS_FILE, number, problem))
            continue
        pair = PairRecord.from_json(data)
        try:
            _check_pair(pair, number, by_offset, settings, found)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            found.append(Violation(artifacts.PAIRS_FILE, number, f"malformed pair record ({type(err).__name__}: {err})"))
            continue
        pairs.append(pair)
    try:
        expected_ids = [p.id for p in build_pairs(runs, {}, bool(settings.get("pair_unparsed")),
                                                           bool(settings.get("strict_format")))]
    except ArtifactError as err:
        found.append(Violation(artifacts.RUNS_FILE, 0, str(err)))
        return pairs
    if sorted(p.id for p in pairs) != sorted(expected_ids):
        found.append(Violation(artifacts.PAIRS_FILE, 0, f"pairs {[p.id for p in pairs]} but runs.jsonl pairs "
                                                        f"{expected_ids}"))
    return pairs


def _check_pair(pair: PairRecord, number: int, by_offset: dict[int, RunRecord], settings: dict[str, Any],
                found: list[Violation]) -> None:
    """Check one pair's references, labels and step selection against runs.jsonl."""
    for role, ref in (("correct", pair.correct_ref), ("incorrect", pair.incorrect_ref)):
        offset = ref.get("runs_offset")
        record = None if offset is None else by_offset.get(offset)
        if record is None or (record.id, record.attempt) != (pair.id, ref.get("attempt")):
            found.append(Violation(artifacts.PAIRS_FILE, number,
                                   f"{pair.id}: {role}_ref runs_offset {ref.get('runs_offset')} is not the line "
                                   f"of attempt {ref.get('attempt')}"))
            continue
        if role == "correct" and (pair.gold_answer != record.gold_answer
                                  or pair.problem != (question_of(record.prompt) or pair.problem)
                                  or pair.decode_config != {"top_p": record.top_p,
                                                            "max_new_tokens": record.max_new_tokens}):
            found.append(Violation(artifacts.PAIRS_FILE, number,
                                   f"{pair.id}: gold_answer/problem/decode_config differ from its runs"))
        if role == "correct" and not record.correct:
            found.append(Violation(artifacts.PAIRS_FILE, number, f"{pair.id}: correct_ref is not correct"))
        if role == "incorrect" and (record.correct or not (record.parse_ok or settings.get("pair_unparsed"))):
            found.append(Violation(artifacts.PAIRS_FILE, number,
                                   f"{pair.id}: incorrect_ref is not a parsed incorrect attempt"))
        if role == "correct" and record.correct:
            expected = select_steps(parse_trace(record.text, strict=bool(settings.get("strict_format"))))
            got = (pair.steps_selected["early"]["step_idx"], pair.steps_selected["late"]["step_idx"])
            if expected != got:
                found.append(Violation(artifacts.PAIRS_FILE, number,
                                       f"{pair.id}: steps_selected {got}, the rule gives {expected}"))
        if role == "incorrect" and pair.incorrect_steps_selected is not None:
            want = steps_selected(record.text, "incorrect", bool(settings.get("strict_format")))
            if want != pair.incorrect_steps_selected:
                found.append(Violation(artifacts.PAIRS_FILE, number, f"{pair.id}: incorrect_steps_selected "
                                       f"{pair.incorrect_steps_selected}, the rule gives {want}"))


def _check_derived(root: Path, runs: list[RunLine], pairs: list[PairRecord]) -> list[Violation]:
    out = []
    csv_path = RunDirectory(root).pairs_csv_path
    if not csv_path.is_file():
        out.append(Violation(artifacts.PAIRS_CSV, 0, "missing"))
    else:
        expected = pairs_csv(pairs).splitlines()
        actual = csv_path.read_text("utf-8").splitlines()
        for number in range(max(len(expected), len(actual))):
            want = expected[number] if number < len(expected) else None
            got = actual[number] if number < len(actual) else None
            if want != got:
                out.append(Violation(artifacts.PAIRS_CSV, number + 1, f"{got!r}, pairs.jsonl gives {want!r}"))
    summary_path = RunDirectory(root).summary_path
    if not summary_path.is_file():
        out.append(Violation(artifacts.SUMMARY_FILE, 0, "missing"))
        return out
    try:
        summary = json.loads(summary_path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        out.append(Violation(artifacts.SUMMARY_FILE, 0, f"not valid JSON ({err})"))
        return out
    if not isinstance(summary, dict):
        out.append(Violation(artifacts.SUMMARY_FILE, 0, "not a JSON object"))
        return out
    for key, value in build_summary(runs, pairs).items():
        if summary.get(key) != value:
            out.append(Violation(artifacts.SUMMARY_FILE, 0, f"{key} is {summary.get(key)!r}, runs give {value!r}"))
    return out
