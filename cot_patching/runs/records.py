"""A run's records, one JSON line each: attempts (runs.jsonl), pairs (pairs.jsonl), their checks and readers."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from cot_patching.runs.files import ArtifactError, FsyncedAppender


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


class RunsAppender(FsyncedAppender):
    """Appends complete, fsynced lines to runs.jsonl and returns each line's byte offset."""

    def append(self, record: RunRecord) -> int:
        """Write one record as a whole line, flushed to disk before returning its offset."""
        return self.append_bytes(record.to_line())

    def __enter__(self) -> RunsAppender:
        return self


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
