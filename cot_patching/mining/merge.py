"""Merge the shard directories of one mining run into the directory ONE process would have written.

A single process mines problems in file order and stops once `min_pairs` pairs exist. Each shard mined its own
problems in the same order with the same stop rule on its own pairs, so every shard covers everything up to the
point where the single process would have stopped (the global M-th pair comes no later than any shard's own M-th).
The merge walks the problem file in order, takes each problem's attempt lines byte for byte from its shard, and
stops where the single process would have; problems after that point that shards mined anyway are left out (and
counted). Derived files are rebuilt by the same code `mine` uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from cot_patching.mining.miner import MiningError, problems_sha256, read_runs_or_explain
from cot_patching.mining.settings import MineSettings
from cot_patching.mining.sharding import parse_shard, shard_index
from cot_patching.problems import load_problems
from cot_patching.runs import artifacts
from cot_patching.runs.directory import RunDirectory, directory_lock
from cot_patching.runs.files import ArtifactError, atomic_write_bytes
from cot_patching.runs.manifest import RunManifest, Session
from cot_patching.runs.records import RunLine, RunRecord
from cot_patching.runs.stop_rule import find_pair, problem_finished, run_finished
from cot_patching.runs.tally import RunTally, write_derived

MODEL_IDENTITY = ("revision", "tokenizer_sha256", "dtype", "backend", "device")


@dataclass
class ShardRun:
    """One shard directory as read for a merge."""

    path: Path
    manifest: RunManifest
    index: int
    count: int
    lines: list[RunLine]
    raw: dict[tuple[str, int], bytes] = field(default_factory=dict)

    @property
    def last_session(self) -> Session:
        """The shard's latest mining session."""
        return self.manifest.last_session


@dataclass(frozen=True)
class MergeReport:
    """What a merge wrote and what it left out."""

    problems: int
    attempts: int
    pairs: int
    dropped_problems: list[str]
    missing: list[str]


def read_shard(path: Path) -> ShardRun:
    """A shard directory's manifest and runs (raw line bytes kept)."""
    path = Path(path)
    where = RunDirectory(path).manifest_path
    try:
        manifest = RunManifest.load(path)
    except ArtifactError as err:
        raise MiningError(f"{where} is not a mining manifest ({err})") from None
    shard = manifest.settings.get("shard")
    if not shard:
        raise MiningError(f"{path} is not a shard (its settings have no shard; mine with --shard K/N)")
    schedule = manifest.settings.get("schedule")
    if not isinstance(schedule, list) or not schedule:
        raise MiningError(f"{where}: settings.schedule is missing or not a list of temperatures")
    if not manifest.sessions:
        raise MiningError(f"{where}: sessions is missing or not a list of session objects; the shard's stop rule "
                          "(min_pairs) is recorded there, so it cannot be merged")
    min_pairs = manifest.last_session.options.get("min_pairs")
    if isinstance(min_pairs, bool) or not isinstance(min_pairs, int) or min_pairs < 1:
        raise MiningError(f"{where}: the last session records no min_pairs (options.min_pairs), the stop rule "
                          "the merge must apply")
    try:
        parsed = parse_shard(shard)
    except ValueError as err:
        raise MiningError(f"{where}: {err}") from None
    lines = read_runs_or_explain(path)
    raw: dict[tuple[str, int], bytes] = {}
    with open(RunDirectory(path).runs_path, "rb") as handle:
        data = handle.read()
    for line in lines:
        end = data.index(b"\n", line.offset) + 1
        raw[(line.record.id, line.record.attempt)] = data[line.offset:end]
    return ShardRun(path, manifest, parsed.index, parsed.count, lines, raw)


def _facts(shard: ShardRun) -> dict[str, Any]:
    session = shard.last_session
    settings = {k: v for k, v in shard.manifest.settings.items() if k != "shard"}
    model = shard.manifest.model.to_json()
    options = session.options
    return {
        "settings": settings,
        "model": {key: _device_kind(model.get(key)) if key == "device" else model.get(key) for key in MODEL_IDENTITY},
        "software versions": session.environment.get("versions"),
        "decode path": session.decode_path,
        "min_pairs": options.get("min_pairs"),
        "shard count": shard.count,
    }


def _device_kind(device: Any) -> Any:
    """`cuda:1` -> `cuda`: shards of one run differ in which GPU they used, not in its kind."""
    return device.split(":")[0] if isinstance(device, str) else device


def check_compatible(shards: Sequence[ShardRun]) -> None:
    """Refuse shards mined with different settings, model, versions or decode path, naming the difference."""
    first = _facts(shards[0])
    for shard in shards[1:]:
        facts = _facts(shard)
        for key, value in first.items():
            if facts[key] != value:
                detail = value
                if isinstance(value, dict) and isinstance(facts[key], dict):
                    diff = sorted(k for k in set(value) | set(facts[key]) if value.get(k) != facts[key].get(k))
                    detail = {k: (value.get(k), facts[key].get(k)) for k in diff}
                raise MiningError(f"cannot merge {shards[0].path} and {shard.path}: different {key} {detail}")
    seen: dict[int, Path] = {}
    for shard in shards:
        if shard.index in seen:
            raise MiningError(f"{seen[shard.index]} and {shard.path} are both shard {shard.index}/{shard.count}")
        seen[shard.index] = shard.path


def _problems_file(shards: Sequence[ShardRun], override: str | Path | None) -> Path:
    recorded = shards[0].last_session.options.get("problems")
    path = Path(override or recorded or "")
    if not path.is_file():
        raise MiningError(f"the shards' problem file {path} is not found here; pass --problems PATH")
    wanted = shards[0].manifest.settings.get("problems_sha256")
    if problems_sha256(path) != wanted:
        raise MiningError(f"{path} is not the problem file the shards were mined on (sha256 differs)")
    return path


def merge_shards(out: str | Path, shard_dirs: Sequence[str | Path], problems_path: str | Path | None = None,
                 partial: bool = False, argv: Sequence[str] = ()) -> MergeReport:
    """Write `out` as one process mining the shards' problems in file order would have; idempotent."""
    out = Path(out)
    if not shard_dirs:
        raise MiningError("merge needs at least one shard directory")
    shards = sorted((read_shard(Path(d)) for d in shard_dirs), key=lambda s: s.index)
    check_compatible(shards)
    count = shards[0].count
    present = {shard.index: shard for shard in shards}
    problems = load_problems(_problems_file(shards, problems_path))
    settings = shards[0].manifest.settings
    schedule = settings["schedule"]
    min_pairs = int(_facts(shards[0])["min_pairs"])
    recorded = MineSettings.recorded(shards[0].manifest)
    pair_unparsed, strict = recorded.pair_unparsed, recorded.strict_format

    by_problem: dict[str, list[RunRecord]] = {}
    for shard in shards:
        for line in shard.lines:
            by_problem.setdefault(line.record.id, []).append(line.record)

    chosen: list[bytes] = []
    records: list[RunRecord] = []
    pairs_found, missing, dropped, processed = 0, [], [], 0
    stopped = False
    for problem in problems:
        attempts = sorted(by_problem.get(problem.id, []), key=lambda r: r.attempt)
        if stopped or run_finished(pairs_found, min_pairs):
            stopped = True
            if attempts:
                dropped.append(problem.id)
            continue
        index = shard_index(problem.id, count)
        paired = find_pair(attempts, pair_unparsed) is not None
        complete = problem_finished(attempts, len(schedule), pair_unparsed)
        if index not in present or not complete:
            where = f"shard {index}/{count} " + ("is not given" if index not in present else
                                                  f"({present[index].path}) has {len(attempts)} of its attempts")
            missing.append(f"{problem.id}: {where}")
            if not partial:
                raise MiningError(f"shard {index}/{count} is not finished: {problem.id} has "
                                  f"{len(attempts)} attempts and no pair; resume that shard, or merge with --partial"
                                  if index in present else f"shard {index}/{count} is missing ({problem.id}); "
                                  "give every shard's directory, or merge with --partial")
            stopped = True
            continue
        processed += 1
        if [r.attempt for r in attempts] != list(range(len(attempts))):
            raise MiningError(f"{problem.id}: shard {index}/{count} has attempts {[r.attempt for r in attempts]}")
        for record in attempts:
            chosen.append(present[index].raw[(record.id, record.attempt)])
            records.append(record)
        pairs_found += int(paired)

    out.mkdir(parents=True, exist_ok=True)
    with directory_lock(out):
        _check_merge_target(out, shards)
        artifacts.remove_stale_temporaries(out)
        atomic_write_bytes(RunDirectory(out).runs_path, b"".join(chosen))
        offsets, position = [], 0
        for raw in chosen:
            offsets.append(position)
            position += len(raw)
        questions = {p.id: p.question for p in problems}
        run_lines = [RunLine(offset, record) for offset, record in zip(offsets, records)]
        tally = RunTally(run_lines, questions, pair_unparsed, strict)
        write_derived(out, tally.pairs, tally.summary())
        RunManifest(
            settings={**settings, "shard": None}, model=shards[0].manifest.model,
            sessions=tuple(replace(session, shard=f"{s.index}/{s.count}") for s in shards
                           for session in s.manifest.sessions),
            shards=tuple(_shard_entry(shard) for shard in shards),
            merge={"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": list(argv),
                   "problems": processed, "attempts": len(records), "pairs": len(tally.pairs),
                   "dropped_problems": dropped, "partial": partial, "missing": missing},
        ).save(out)
    return MergeReport(processed, len(records), len(tally.pairs), dropped, missing)


def _check_merge_target(out: Path, shards: Sequence[ShardRun]) -> None:
    """Refuse an `out` that is not new and not an earlier merge of these same shards (nothing is written)."""
    manifest_path = RunDirectory(out).manifest_path
    if not manifest_path.exists():
        held = [name for name in artifacts.RUN_FILES if (out / name).exists()]
        if held:
            raise MiningError(f"{out} holds {', '.join(held)} but no {artifacts.MANIFEST_FILE}: not a merge of "
                              "these shards; nothing was changed, merge into a new directory")
        return
    manifest = RunManifest.load(out)
    if manifest.merge is None:
        raise MiningError(f"{out} holds a mining run, not a merge; merge into a new directory")
    earlier = {(entry.get("shard"), entry.get("dir")) for entry in manifest.shards
               if isinstance(entry, dict)}
    now = {(f"{shard.index}/{shard.count}", str(shard.path.resolve())) for shard in shards}
    if earlier != now:
        raise MiningError(f"{out} is a merge of other shards ({', '.join(sorted(str(d) for _, d in earlier))}); "
                          "nothing was changed: merge into a new directory")


def _shard_entry(shard: ShardRun) -> dict[str, Any]:
    session = shard.last_session
    environment = session.environment
    ids = list(dict.fromkeys(line.record.id for line in shard.lines))
    return {"shard": f"{shard.index}/{shard.count}", "dir": str(shard.path.resolve()),
            "host": environment.get("platform"), "gpu": environment.get("gpu"), "argv": list(session.argv),
            "versions": environment.get("versions"), "problems_mined": len(ids),
            "first_problem": ids[0] if ids else None, "last_problem": ids[-1] if ids else None,
            "attempts": len(shard.lines)}


def merged_summary_line(report: MergeReport) -> str:
    """One line saying what the merge holds and left out."""
    text = f"merged {report.problems} problems, {report.attempts} attempts, {report.pairs} pairs"
    if report.dropped_problems:
        text += (f"; {len(report.dropped_problems)} problems mined by shards after the point where one process "
                 "would have stopped are left out")
    if report.missing:
        text += f"; partial: {len(report.missing)} problems missing ({report.missing[0]} ...)"
    return text
