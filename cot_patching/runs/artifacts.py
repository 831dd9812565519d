"""The files of a mining run: records, crash-safe appends, atomic derived files (SPEC §6)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from cot_patching.runs.stop_rule import find_pair
from cot_patching.traces.parsing import parse_trace, select_steps

RUNS_FILE = "runs.jsonl"
PAIRS_FILE = "pairs.jsonl"
PAIRS_CSV = "pairs_summary.csv"
SUMMARY_FILE = "summary.json"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"
SET_ASIDE_FILE = "runs.set-aside.jsonl"
ACTIVATIONS_DIR = "activations"
PATCHING_DIR = "patching"  # `cot-patching patch`: the study's results.csv, settings, heatmaps
LOCALIZATION_DIR = "localization"  # `cot-patching localize`: rollouts.jsonl, steps.csv, forks.csv, summary.json
SHARDS_DIR = "shards"  # `mine --devices`: one shard run per worker, and its log
CACHE_INDEX_FILE = "index.jsonl"
CACHE_CONFIG_FILE = "cache_config.json"
RUN_FILES = (RUNS_FILE, PAIRS_FILE, PAIRS_CSV, SUMMARY_FILE)  # what mine and merge write beside the manifest
CSV_COLUMNS = ("id", "n_attempts", "early_step_idx", "late_step_idx", "correct_attempt", "incorrect_attempt")


class ArtifactError(RuntimeError):
    """An output directory whose files are missing, inconsistent or unusable."""


@dataclass
class RunRecord:
    """One attempt, exactly as one line of runs.jsonl."""

    id: str
    attempt: int
    temperature: float
    top_p: float
    seed: int
    model: str
    prompt: str
    text: str
    final_answer: str | None
    correct: bool
    parse_ok: bool
    token_ids: list[int]
    step_spans: list[dict[str, Any]]
    final_answer_span: dict[str, int] | None
    prompt_token_ids: list[int]
    max_new_tokens: int
    finish_reason: str
    gold_answer: str = ""
    normalized_answer: str | None = None
    score_rule: str = ""
    strict_format_ok: bool = False
    chat_template_applied: bool = False
    model_revision: str | None = None
    token_logprobs: list[float] = field(default_factory=list)
    error: str | None = None  # set (with finish_reason "error") when the attempt failed deterministically
    batch: dict[str, Any] | None = None  # where it was decoded with `--batch-size` > 1 (`decoding.batched.BatchLayout`)

    def to_line(self) -> bytes:
        """One JSON line, UTF-8, newline-terminated (`error` and `batch` only where there is one)."""
        data = asdict(self)
        for optional in ("error", "batch"):
            if data[optional] is None:
                del data[optional]
        return (json.dumps(data, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        """A record from a parsed runs.jsonl line (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


RUN_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,), "attempt": (int,), "temperature": (int, float), "top_p": (int, float), "seed": (int,),
    "model": (str,), "prompt": (str,), "text": (str,), "final_answer": (str, type(None)), "correct": (bool,),
    "parse_ok": (bool,), "token_ids": (list,), "step_spans": (list,), "final_answer_span": (dict, type(None)),
    "prompt_token_ids": (list,), "max_new_tokens": (int,), "finish_reason": (str,),
}


OPTIONAL_RUN_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "gold_answer": (str,), "normalized_answer": (str, type(None)), "score_rule": (str,),
    "strict_format_ok": (bool,), "chat_template_applied": (bool,), "model_revision": (str, type(None)),
    "token_logprobs": (list,), "error": (str, type(None)), "batch": (dict, type(None)),
}


def run_problems(data: Any) -> list[str]:
    """What makes a parsed runs.jsonl line not a run record (missing or mistyped fields)."""
    if not isinstance(data, dict):
        return ["not a JSON object"]
    problems = [f"missing field {name}" for name in RUN_FIELD_TYPES if name not in data]
    for name, types in {**RUN_FIELD_TYPES, **OPTIONAL_RUN_FIELD_TYPES}.items():
        if name in data and (not isinstance(data[name], types)
                             or (bool not in types and isinstance(data[name], bool))):
            problems.append(f"field {name} has type {type(data[name]).__name__}")
    known = {f.name for f in fields(RunRecord)}
    return problems or [f"unknown field {k}" for k in data if k not in known]


@dataclass(frozen=True)
class RunLine:
    """A record with the byte offset of its line in runs.jsonl."""

    offset: int
    record: RunRecord


@dataclass
class PairRecord:
    """One paired problem, exactly as one line of pairs.jsonl."""

    id: str
    problem: str
    gold_answer: str
    correct_ref: dict[str, int]
    incorrect_ref: dict[str, int]
    steps_selected: dict[str, dict[str, Any]]  # the correct trace's early and late step
    decode_config: dict[str, Any]
    n_attempts: int
    # The incorrect trace's early and late step by the same rule ({}: it has no steps); None in pairs written before
    # pairs carried it (`LoadedPair.selected_steps` then applies the rule when the pair is loaded).
    incorrect_steps_selected: dict[str, dict[str, Any]] | None = None

    def to_line(self) -> str:
        """One JSON line, newline-terminated."""
        return json.dumps(asdict(self), ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PairRecord:
        """A record from a parsed pairs.jsonl line (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same folder, fsync and rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder, fsync and rename (a failure leaves no temp)."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
        fsync_directory(path.parent)  # the rename itself survives a power loss only once its folder is synced
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, f"cannot write {path}: {err.strerror}; it is unchanged") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_directory(folder: Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def default_file_mode() -> int:
    """The mode a plain `open()` gives a new file under the current umask (temp files start at 0600)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: Any) -> None:
    """Atomically write indented JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


class RunsAppender:
    """Appends complete, fsynced lines to runs.jsonl and returns each line's byte offset."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle = open(self.path, "ab")

    def append(self, record: RunRecord) -> int:
        """Write one record as a whole line, flushed to disk before returning its offset."""
        offset = self._handle.seek(0, os.SEEK_END)
        self._handle.write(record.to_line())
        self._handle.flush()
        os.fsync(self._handle.fileno())
        return offset

    def close(self) -> None:
        """Close the file."""
        self._handle.close()

    def __enter__(self) -> RunsAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def drop_torn_tail(path: Path) -> int:
    """Cut a last line that a kill left without its newline; return how many bytes were dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as handle:
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    return len(data) - keep


@dataclass(frozen=True)
class ScannedLine:
    """One line of runs.jsonl as read: its record, or what makes it not one."""

    number: int  # 1-based
    offset: int  # byte offset of the line
    raw: bytes
    record: RunRecord | None
    problems: list[str]
    torn: bool = False  # the last line, without its newline (a kill mid-write)


def scan_runs(path: Path) -> Iterator[ScannedLine]:
    """Every line of runs.jsonl, damaged ones included, each with its number, offset and problems."""
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                yield ScannedLine(number, offset, raw, None, ["torn last line (no newline)"], torn=True)
                return
            try:
                data = json.loads(raw)
            except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
                problems = [f"not valid JSON ({getattr(err, 'msg', err)})"]
            else:
                problems = run_problems(data)
            yield ScannedLine(number, offset, raw, None if problems else RunRecord.from_json(data), problems)
            offset += len(raw)


def read_runs(path: Path) -> list[RunLine]:
    """Every complete line of runs.jsonl with its byte offset; a torn last line is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    lines: list[RunLine] = []
    for line in scan_runs(path):
        if line.torn:
            break
        if line.record is None:
            raise ArtifactError(f"{path}:{line.number}: {'; '.join(line.problems)}")
        lines.append(RunLine(line.offset, line.record))
    return lines


def read_run_at(path: Path, offset: int) -> RunRecord:
    """The runs.jsonl record whose line starts at byte `offset`."""
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ArtifactError(f"{path}: {offset!r} is not a byte offset")
    with open(path, "rb") as handle:
        handle.seek(offset)
        raw = handle.readline()
    if not raw.endswith(b"\n"):
        raise ArtifactError(f"{path}: no complete line at byte offset {offset}")
    try:
        return RunRecord.from_json(json.loads(raw))
    except (ValueError, TypeError, AttributeError) as err:
        raise ArtifactError(f"{path}: byte offset {offset} is not the start of a run line ({err})") from None


def read_pairs(path: Path) -> list[PairRecord]:
    """Every record of pairs.jsonl; a damaged one is an ArtifactError naming its line."""
    path = Path(path)
    if not path.exists():
        return []
    pairs = []
    try:
        lines = path.read_text("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ArtifactError(f"{path}: not UTF-8 text ({err.reason})") from None
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise ArtifactError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        problem = pair_problem(data)
        if problem:
            raise ArtifactError(f"{path}:{number}: {problem}")
        pairs.append(PairRecord.from_json(data))
    return pairs


def pair_problem(data: Any) -> str | None:
    """What makes a parsed pairs.jsonl line not a pair record (None: nothing)."""
    if not isinstance(data, dict):
        return "not a JSON object"
    missing = [f.name for f in fields(PairRecord) if f.name not in data and f.name != "incorrect_steps_selected"]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    if not isinstance(data["id"], str):
        return "id is not a string"
    for role in ("correct_ref", "incorrect_ref"):
        ref = data[role]
        if not isinstance(ref, dict) or any(
            isinstance(ref.get(k), bool) or not isinstance(ref.get(k), int) or ref[k] < 0
            for k in ("attempt", "runs_offset")
        ):
            return f"{role} must hold a non-negative integer attempt and runs_offset"
    selected = data["steps_selected"]
    if not isinstance(selected, dict) or any(
        not isinstance(selected.get(k), dict) or isinstance(selected[k].get("step_idx"), bool)
        or not isinstance(selected[k].get("step_idx"), int) for k in ("early", "late")
    ):
        return "steps_selected must hold early and late, each with an integer step_idx"
    incorrect = data.get("incorrect_steps_selected")
    if incorrect is not None and (not isinstance(incorrect, dict) or (incorrect and any(
        not isinstance(incorrect.get(k), dict) or isinstance(incorrect[k].get("step_idx"), bool)
        or not isinstance(incorrect[k].get("step_idx"), int) for k in ("early", "late")
    ))):
        return "incorrect_steps_selected must be empty or hold early and late, each with an integer step_idx"
    return None


def steps_selected(text: str, role: str, strict_format: bool = False) -> dict[str, dict[str, Any]]:
    """A trace's early and late step by the selection rule (`select_steps`), as a pair record stores them; {} when
    the trace has no steps."""
    selected = select_steps(parse_trace(text, strict=strict_format))
    if selected is None:
        return {}
    early, late = selected
    return {"early": {"from": role, "step_idx": early}, "late": {"from": role, "step_idx": late}}


def group_by_problem(runs: Iterable[RunLine]) -> dict[str, list[RunLine]]:
    """Run lines per problem id, in file order."""
    grouped: dict[str, list[RunLine]] = {}
    for line in runs:
        grouped.setdefault(line.record.id, []).append(line)
    return grouped


def make_pair(
    problem_id: str, lines: Sequence[RunLine], question: str, pair_unparsed: bool = False, strict_format: bool = False,
) -> PairRecord | None:
    """The pair record of one problem's attempts, if they contain a pair."""
    found = find_pair([line.record for line in lines], pair_unparsed)
    if found is None:
        return None
    correct, incorrect = lines[found[0]], lines[found[1]]
    selected = steps_selected(correct.record.text, "correct", strict_format)
    if not selected:
        raise ArtifactError(f"{problem_id} attempt {correct.record.attempt}: correct trace has no steps")
    return PairRecord(
        id=problem_id,
        problem=question,
        gold_answer=correct.record.gold_answer,
        correct_ref={"attempt": correct.record.attempt, "runs_offset": correct.offset},
        incorrect_ref={"attempt": incorrect.record.attempt, "runs_offset": incorrect.offset},
        steps_selected=selected,
        decode_config={"top_p": correct.record.top_p, "max_new_tokens": correct.record.max_new_tokens},
        n_attempts=len(lines),
        incorrect_steps_selected=steps_selected(incorrect.record.text, "incorrect", strict_format),
    )


def in_problem_order(pairs: Iterable[PairRecord], questions: dict[str, str]) -> list[PairRecord]:
    """Pairs in the order of `questions` (the problems file), then in their given order."""
    order = {problem_id: index for index, problem_id in enumerate(questions)}
    return sorted(pairs, key=lambda pair: order.get(pair.id, len(order)))


def build_pairs(
    runs: Sequence[RunLine],
    questions: dict[str, str],
    pair_unparsed: bool = False,
    strict_format: bool = False,
) -> list[PairRecord]:
    """One pair record per problem whose attempts contain a pair, in the order of `questions` (the problems file),
    then of first attempts for problems it lacks; so a resumed run lists its pairs as a run mined in one go."""
    pairs = []
    for problem_id, lines in group_by_problem(runs).items():
        pair = make_pair(problem_id, lines, questions.get(problem_id, ""), pair_unparsed, strict_format)
        if pair is not None:
            pairs.append(pair)
    return in_problem_order(pairs, questions)


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True, initial: int = 0) -> Any:
    """A tqdm bar on stderr, or None when progress is off."""
    if not enabled:
        return None
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


def pairs_csv(pairs: Sequence[PairRecord]) -> str:
    """pairs_summary.csv as text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for pair in pairs:
        writer.writerow([
            pair.id, pair.n_attempts,
            pair.steps_selected["early"]["step_idx"], pair.steps_selected["late"]["step_idx"],
            pair.correct_ref["attempt"], pair.incorrect_ref["attempt"],
        ])
    return buffer.getvalue()


def temperature_key(temperature: float) -> str:
    """A temperature as a summary key: `0.0`, `0.9`."""
    return repr(float(temperature))


@dataclass
class AttemptCounts:
    """The attempt counts behind summary.json, one `add` per attempt."""

    problems: set[str] = field(default_factory=set)
    by_outcome: dict[str, Counter[str]] = field(
        default_factory=lambda: {"correct": Counter(), "incorrect": Counter()})
    attempts: int = 0
    parse_ok: int = 0
    strict_format_ok: int = 0
    correct: int = 0

    def add(self, record: RunRecord) -> None:
        """Count one attempt."""
        self.problems.add(record.id)
        self.by_outcome["correct" if record.correct else "incorrect"][temperature_key(record.temperature)] += 1
        self.attempts += 1
        self.parse_ok += record.parse_ok
        self.strict_format_ok += record.strict_format_ok
        self.correct += record.correct

    def summary(self, pairs: Sequence[PairRecord], paired_attempts: int | None = None) -> dict[str, Any]:
        """summary.json's figures (`paired_attempts`: the pairs' n_attempts summed, if already known)."""
        if paired_attempts is None:
            paired_attempts = sum(p.n_attempts for p in pairs)
        return {
            "pairs_found": len(pairs),
            "problems_processed": len(self.problems),
            "avg_attempts_per_paired_item": paired_attempts / len(pairs) if pairs else None,
            "temperatures_by_outcome": {k: dict(sorted(v.items())) for k, v in self.by_outcome.items()},
            "attempts": self.attempts,
            "attempts_parse_ok": self.parse_ok,
            "attempts_strict_format_ok": self.strict_format_ok,
            "attempts_correct": self.correct,
        }


def build_summary(runs: Sequence[RunLine], pairs: Sequence[PairRecord]) -> dict[str, Any]:
    """summary.json's figures over all attempts."""
    counts = AttemptCounts()
    for line in runs:
        counts.add(line.record)
    return counts.summary(pairs)


class RunTally:
    """A run's pairs and summary, brought up to date one attempt at a time: O(1) per attempt (a pair's record is
    made once, when its problem completes it), where rebuilding both from all runs is O(attempts)."""

    def __init__(self, runs: Sequence[RunLine], questions: dict[str, str], pair_unparsed: bool = False,
                 strict_format: bool = False) -> None:
        self.questions, self.pair_unparsed, self.strict_format = questions, pair_unparsed, strict_format
        self.by_problem = group_by_problem(runs)
        self.pairs = build_pairs(runs, questions, pair_unparsed, strict_format)
        self.by_id = {p.id: p for p in self.pairs}
        self.order = {problem_id: index for index, problem_id in enumerate(questions)}
        self.paired_attempts = sum(p.n_attempts for p in self.pairs)
        self.counts = AttemptCounts()
        for line in runs:
            self.counts.add(line.record)

    def add(self, line: RunLine) -> str | None:
        """Count one new attempt; how the pairs changed: None, "appended" (a new last pair) or "changed"."""
        self.counts.add(line.record)
        problem_id = line.record.id
        lines = self.by_problem.setdefault(problem_id, [])
        lines.append(line)
        pair = self.by_id.get(problem_id)
        if pair is not None:
            self.paired_attempts += len(lines) - pair.n_attempts
            pair.n_attempts = len(lines)
            return "changed"
        pair = make_pair(problem_id, lines, self.questions.get(problem_id, ""), self.pair_unparsed,
                         self.strict_format)
        if pair is None:
            return None
        self.by_id[problem_id] = pair
        self.paired_attempts += pair.n_attempts
        last = len(self.order)
        if not self.pairs or self.order.get(problem_id, last) > self.order.get(self.pairs[-1].id, last):
            self.pairs.append(pair)
            return "appended"
        self.pairs = in_problem_order(self.by_id.values(), self.questions)
        return "changed"

    def summary(self) -> dict[str, Any]:
        """summary.json's figures now."""
        return self.counts.summary(self.pairs, self.paired_attempts)

    def write(self, outdir: Path, change: str | None) -> None:
        """Bring the derived files up to date after `add`: append a new last pair (fsynced), rewrite them only if
        an earlier pair changed, and rewrite summary.json (its size does not grow with the run)."""
        outdir = Path(outdir)
        if change == "appended":
            pair = self.pairs[-1]
            append_fsynced(outdir / PAIRS_FILE, pair.to_line())
            append_fsynced(outdir / PAIRS_CSV, pairs_csv([pair]).split("\n", 1)[1])
        write_derived(outdir, self.pairs, self.summary(), pairs_changed=change == "changed")


def append_fsynced(path: Path, text: str) -> int:
    """Append `text` (UTF-8) and fsync; the file's size afterwards. A failed append (a full disk) may leave a torn
    last line, which every reader of our append-only files drops before it appends again."""
    try:
        with open(path, "a", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
            return os.fstat(handle.fileno()).st_size
    except OSError as err:
        raise OSError(err.errno, f"cannot append to {path}: {err.strerror}") from None


def write_derived(
    outdir: Path, pairs: Sequence[PairRecord], summary: dict[str, Any], pairs_changed: bool = True
) -> None:
    """Atomically rewrite summary.json, and pairs.jsonl and pairs_summary.csv if the pairs changed."""
    outdir = Path(outdir)
    if pairs_changed or not (outdir / PAIRS_FILE).exists():
        atomic_write_text(outdir / PAIRS_FILE, "".join(p.to_line() for p in pairs))
        atomic_write_text(outdir / PAIRS_CSV, pairs_csv(pairs))
    write_json(outdir / SUMMARY_FILE, summary)


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


def read_text_file(path: Path) -> str:
    """A UTF-8 text file; one that is missing or not UTF-8 is an ArtifactError naming it."""
    try:
        return Path(path).read_text("utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing") from None
    except UnicodeDecodeError as err:
        raise ArtifactError(f"{path} is not UTF-8 text (byte {err.start})") from None


def read_json_file(path: Path, kind: type | None = None) -> Any:
    """A JSON file's value (of `kind`, when given); otherwise an ArtifactError naming the file and line."""
    text = read_text_file(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if kind is not None and not isinstance(value, kind):
        raise ArtifactError(f"{path} is not a JSON {'object' if kind is dict else kind.__name__}")
    return value


def read_jsonl_file(path: Path) -> list[Any]:
    """Every complete line of a JSON-lines file (a last line without its newline, torn by a kill, is left out); a
    damaged line is an ArtifactError naming the file and line."""
    text = read_text_file(path)
    lines = text.split("\n")[:-1]  # the part after the last newline is empty or torn
    values = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ArtifactError(f"{path}:{number}: not valid JSON ({err.msg})") from None
    return values


RECORDED_PACKAGES = ("torch", "transformers", "transformer-lens", "cot-patching", "gguf", "tokenizers")
# The packages whose version decides the tokens a replay produces (cot-patching's own rules are versioned apart).
NUMERICS_PACKAGES = ("torch", "transformers", "transformer-lens", "gguf", "tokenizers")


def installed_versions() -> dict[str, str | None]:
    """The installed version of each package a run records (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def environment_facts() -> dict[str, Any]:
    """Versions of the software that decides numerics, and the device it ran on."""
    import platform

    import torch

    versions = installed_versions()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": gpu,
        "cuda": torch.version.cuda,
        "torch_num_threads": torch.get_num_threads(),
    }


@dataclass(frozen=True)
class LoadedPair:
    """A pair record joined with its two runs."""

    pair: PairRecord
    correct: RunRecord
    incorrect: RunRecord

    @property
    def id(self) -> str:
        """The problem id."""
        return self.pair.id

    def trace(self, which: str) -> RunRecord:
        """The `correct` or `incorrect` run."""
        if which not in ("correct", "incorrect"):
            raise ValueError(f"trace must be 'correct' or 'incorrect', got {which!r}")
        return self.correct if which == "correct" else self.incorrect

    def selected_steps(self, which: str, strict_format: bool = False) -> tuple[int, int] | None:
        """(early, late) step_idx of the `correct` or `incorrect` trace; None when that trace has no steps.

        Pairs written before pair records carried the incorrect trace's steps get them here, by the same rule
        (`strict_format` as the run was mined)."""
        selected = self.pair.steps_selected if which == "correct" else self.pair.incorrect_steps_selected
        if selected is None:
            selected = steps_selected(self.trace(which).text, which, strict_format)
        return (selected["early"]["step_idx"], selected["late"]["step_idx"]) if selected else None

    def runs_offset(self, which: str) -> int:
        """Byte offset in runs.jsonl of the `correct` or `incorrect` run."""
        ref = self.pair.correct_ref if which == "correct" else self.pair.incorrect_ref
        return int(ref["runs_offset"])
