"""Problem records: load and validate problem files, build the GSM8K / SVAMP samples (SPEC §8)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from cot_patching.traces.scoring import format_number, parse_number

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
GSM8K_HUB = ("openai/gsm8k", "main")
SVAMP_HUB = ("ChilleD/SVAMP", None)
REQUIRED_FIELDS = ("id", "question", "gold_answer")


class ProblemFileError(ValueError):
    """A problems file that cannot be used as it is."""


@dataclass(frozen=True)
class Problem:
    """One math word problem with a numeric gold answer."""

    id: str
    question: str
    gold_answer: str
    source: str = ""
    gold_steps: int | None = None  # GSM8K: the reference solution's `<<...>>` calculations (None: not known)

    def to_json(self) -> dict[str, Any]:
        """The record as written to problem files (`gold_steps` only where known)."""
        data = asdict(self)
        if self.gold_steps is None:
            del data["gold_steps"]
        return data

    @property
    def difficulty(self) -> str | None:
        """The difficulty bucket of `gold_steps`: "1", "2", "3", "4" or "5+" (None: not known)."""
        return None if self.gold_steps is None else (str(self.gold_steps) if self.gold_steps < 5 else "5+")


def load_problems(path: str | Path) -> list[Problem]:
    """Read and validate a problems JSON file (a list of `{id, question, gold_answer, source}`)."""
    path = Path(path)
    if not path.is_file():
        raise ProblemFileError(f"problems file not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProblemFileError(f"problems file {path} is not valid JSON: {err}") from None
    if isinstance(raw, dict) and isinstance(raw.get("problems"), list):
        raw = raw["problems"]
    if not isinstance(raw, list) or not raw:
        raise ProblemFileError(f"problems file {path} must hold a non-empty JSON list of problems")
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        problem = _validate_item(path, index, item)
        if problem.id in seen:
            raise ProblemFileError(f"problems file {path}: duplicate id {problem.id!r} (item {index})")
        seen.add(problem.id)
        problems.append(problem)
    return problems


def _validate_item(path: Path, index: int, item: Any) -> Problem:
    where = f"problems file {path}, item {index}"
    if not isinstance(item, dict):
        raise ProblemFileError(f"{where}: expected an object, got {type(item).__name__}")
    missing = [name for name in REQUIRED_FIELDS if name not in item]
    if missing:
        raise ProblemFileError(f"{where}: missing field(s) {', '.join(missing)}")
    problem_id, question, gold = item["id"], item["question"], item["gold_answer"]
    if not isinstance(problem_id, (str, int)) or isinstance(problem_id, bool) or str(problem_id) == "":
        raise ProblemFileError(f"{where}: 'id' must be a non-empty string")
    if not isinstance(question, str) or not question.strip():
        raise ProblemFileError(f"{where}: 'question' must be a non-empty string")
    if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        raise ProblemFileError(f"{where}: 'gold_answer' must be a number or a numeric string")
    if parse_number(str(gold)) is None:
        raise ProblemFileError(f"{where}: 'gold_answer' {gold!r} is not numeric")
    steps = item.get("gold_steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ProblemFileError(f"{where}: 'gold_steps' must be a non-negative integer")
    return Problem(
        id=str(problem_id),
        question=question,
        gold_answer=str(gold),
        source=str(item.get("source", "")),
        gold_steps=steps,
    )


def gsm8k_gold(answer: str) -> str | None:
    """The numeric gold of a GSM8K answer (`#### N`, commas removed), or None."""
    match = re.search(r"####\s*(.+?)\s*$", answer.strip())
    if match is None:
        return None
    value = parse_number(match.group(1).replace(",", ""))
    return None if value is None else format_number(value)


def read_gsm8k(split: str = "test", offline: bool | None = None) -> list[Problem]:
    """GSM8K problems with numeric gold, ids `gsm8k-{split}-{row:04d}`, from the vendored file or the hub."""
    local = DATA_DIR / "gsm8k" / f"{split}.jsonl"
    rows: list[dict[str, Any]]
    if local.is_file() and offline is not False:
        rows = [json.loads(line) for line in local.read_text(encoding="utf-8").splitlines() if line]
        source = f"gsm8k/{split} (vendored {local.name})"
    else:
        from datasets import load_dataset

        rows = list(load_dataset(*GSM8K_HUB, split=split))
        source = f"{GSM8K_HUB[0]}:{GSM8K_HUB[1]}/{split}"
    problems = []
    for row_index, row in enumerate(rows):
        gold = gsm8k_gold(row["answer"])
        if gold is not None:
            problems.append(Problem(f"gsm8k-{split}-{row_index:04d}", row["question"], gold, source,
                                    gold_steps=row["answer"].count("<<")))
    return problems


def read_svamp(offline: bool | None = None) -> list[Problem]:
    """SVAMP problems (`Body` + `Question`), ids `svamp-{ID}`, from the vendored file or the hub."""
    local = DATA_DIR / "svamp" / "SVAMP.json"
    if local.is_file() and offline is not False:
        rows = json.loads(local.read_text(encoding="utf-8"))
        source = "svamp (vendored SVAMP.json)"
    else:
        from datasets import load_dataset

        rows = list(load_dataset(SVAMP_HUB[0], split="train")) + list(
            load_dataset(SVAMP_HUB[0], split="test")
        )
        source = SVAMP_HUB[0]
    problems = []
    for row in rows:
        body = str(row["Body"]).strip()
        question = f"{body} {str(row['Question']).strip()}" if body else str(row["Question"]).strip()
        value = parse_number(repr(float(row["Answer"])))
        if value is not None:
            problems.append(Problem(f"svamp-{row['ID']}", question, format_number(value), source))
    return problems


def deterministic_sample(problems: list[Problem], n: int, salt: str = "cot-patching") -> list[Problem]:
    """The `n` problems whose sha256(salt:id) is smallest, in that order: stable across machines."""
    if n <= 0:
        raise ValueError("sample size must be positive")
    ranked = sorted(problems, key=lambda p: hashlib.sha256(f"{salt}:{p.id}".encode()).hexdigest())
    return ranked[:n]


def stratified_sample(problems: list[Problem], n: int, buckets: Iterable[str], salt: str = "cot-patching"
                      ) -> list[Problem]:
    """Up to `n` problems drawn round-robin from the difficulty `buckets` (each ranked as `deterministic_sample`
    ranks), so every prefix of the result is balanced across buckets; problems of other buckets are left out."""
    if n <= 0:
        raise ValueError("sample size must be positive")
    chosen = list(buckets)
    if any(p.difficulty is None for p in problems):
        raise ValueError("stratifying needs each problem's gold_steps (GSM8K's reference calculations)")
    ranked = {bucket: deterministic_sample([p for p in problems if p.difficulty == bucket], max(1, len(problems)),
                                           salt) for bucket in chosen}
    out: list[Problem] = []
    depth = 0
    while len(out) < n and any(depth < len(items) for items in ranked.values()):
        out += [items[depth] for items in ranked.values() if depth < len(items)][: n - len(out)]
        depth += 1
    return out
