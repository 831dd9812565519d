"""One mining run on disk as one object: its files, its lock, its records by (id, attempt), its pairs, activations.

A record is found by its key, `(problem id, attempt)`. Byte offsets into runs.jsonl (a pair's `runs_offset`) are
only an index: a record is read at its offset when the line there holds that key, and otherwise through an index
of every line's key, built by one scan of runs.jsonl. So a pair whose offset went stale (files concatenated or
rewritten by hand) still finds its records, and `validate` reports the stale offset.
"""

from __future__ import annotations

import fcntl
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from cot_patching.runs.artifacts import (
    ACTIVATIONS_DIR,
    LOCALIZATION_DIR,
    LOCK_FILE,
    MANIFEST_FILE,
    PAIRS_CSV,
    PAIRS_FILE,
    PATCHING_DIR,
    REPORT_FILE,
    RUNS_FILE,
    SET_ASIDE_FILE,
    SHARDS_DIR,
    SUMMARY_FILE,
)
from cot_patching.runs.files import ArtifactError, drop_torn_tail
from cot_patching.runs.manifest import RunManifest
from cot_patching.runs.pairing import LoadedPair
from cot_patching.runs.records import PairRecord, RunLine, RunRecord, RunsAppender, read_pairs, read_run_at, read_runs


class RunInUseError(ArtifactError):
    """Another process holds the run directory's lock."""


@contextmanager
def directory_lock(directory: str | Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `directory/.lock` for the block; refuse while another process holds it.

    The kernel releases the lock when its holder dies (kill -9 included), so a stale lock is never taken over by
    hand and two processes can never both hold it. The file holds "host pid" for the message only, and is never
    deleted (deleting it would let a newcomer lock a fresh inode while another waits on the old one).
    """
    fd = os.open(Path(directory) / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        message = _in_use(directory, fd)
        os.close(fd)
        raise RunInUseError(message) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}".encode(), 0)
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def check_not_locked(directory: str | Path) -> None:
    """Refuse, before any work, a directory whose lock another process holds (creates nothing)."""
    try:
        fd = os.open(Path(directory) / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunInUseError(_in_use(directory, fd)) from None
    finally:
        os.close(fd)


def _in_use(directory: str | Path, fd: int) -> str:
    holder = os.pread(fd, 200, 0).decode("utf-8", errors="replace").split() or ["?"]
    return (f"{directory} is in use by another process (pid {holder[-1]} on {' '.join(holder[:-1]) or '?'}); "
            "wait for it to finish, or use another directory")


@dataclass
class RunDirectory:
    """A mining output directory: where its files are, its lock, and its records, pairs and manifest read typed."""

    root: Path
    _offsets: dict[tuple[str, int], int] | None = field(default=None, repr=False, compare=False)
    _offsets_size: int = field(default=-1, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    runs_path = property(lambda self: self.root / RUNS_FILE, doc="runs.jsonl: one record per attempt")
    pairs_path = property(lambda self: self.root / PAIRS_FILE, doc="pairs.jsonl: one record per pair")
    pairs_csv_path = property(lambda self: self.root / PAIRS_CSV, doc="pairs_summary.csv")
    summary_path = property(lambda self: self.root / SUMMARY_FILE, doc="summary.json")
    set_aside_path = property(lambda self: self.root / SET_ASIDE_FILE, doc="runs.set-aside.jsonl: what repair set aside")
    manifest_path = property(lambda self: self.root / MANIFEST_FILE, doc="manifest.json: settings and sessions")
    activations_dir = property(lambda self: self.root / ACTIVATIONS_DIR,
                               doc="where cache-activations writes by default")
    patching_dir = property(lambda self: self.root / PATCHING_DIR, doc="where patch writes by default")
    localization_dir = property(lambda self: self.root / LOCALIZATION_DIR, doc="where localize writes by default")
    report_path = property(lambda self: self.root / REPORT_FILE, doc="where report writes by default")
    shards_dir = property(lambda self: self.root / SHARDS_DIR, doc="mine --devices: one shard run per worker")

    def is_run(self) -> bool:
        """Whether the directory holds a run (its runs.jsonl)."""
        return self.runs_path.is_file()

    def lock(self) -> Any:
        """A context manager holding the directory's exclusive lock (`directory_lock`)."""
        return directory_lock(self.root)

    def check_not_locked(self) -> None:
        """Refuse while another process holds the lock (`check_not_locked`)."""
        check_not_locked(self.root)

    def appender(self) -> RunsAppender:
        """An fsyncing appender to runs.jsonl (use as a context manager)."""
        return RunsAppender(self.runs_path)

    def resume(self) -> list[RunLine]:
        """Drop a torn last line a crash left in runs.jsonl (never a complete one), then every complete record."""
        drop_torn_tail(self.runs_path)
        return self.runs()

    def manifest(self) -> RunManifest:
        """The run manifest (typed; older runs migrated)."""
        return RunManifest.load(self.root)

    def runs(self) -> list[RunLine]:
        """Every complete record of runs.jsonl with its byte offset, in file order."""
        return read_runs(self.runs_path)

    def pairs(self) -> list[PairRecord]:
        """Every record of pairs.jsonl."""
        return read_pairs(self.pairs_path)

    def offsets(self) -> dict[tuple[str, int], int]:
        """(problem id, attempt) -> byte offset of its runs.jsonl line: the index, rebuilt when the file changed."""
        size = self.runs_path.stat().st_size
        if self._offsets is None or size != self._offsets_size:
            self._offsets = {(line.record.id, line.record.attempt): line.offset for line in self.runs()}
            self._offsets_size = size
        return self._offsets

    def record(self, problem_id: str, attempt: int, offset: int | None = None) -> RunRecord:
        """The record of `problem_id`'s attempt: read at `offset` if the line there is it, else found by the index."""
        if offset is not None:
            try:
                record = read_run_at(self.runs_path, offset)
            except ArtifactError:
                record = None
            if record is not None and (record.id, record.attempt) == (problem_id, attempt):
                return record
        found = self.offsets().get((problem_id, attempt))
        if found is None:
            raise ArtifactError(f"{self.runs_path} has no attempt {attempt} of {problem_id!r}")
        return read_run_at(self.runs_path, found)

    def loaded_pairs(self) -> list[LoadedPair]:
        """Every pair with its correct and incorrect records (their spans, token ids, prompt ids)."""
        if not self.pairs_path.is_file() or not self.is_run():
            raise ArtifactError(f"{self.root} has no {PAIRS_FILE} and {RUNS_FILE}: not a mining output directory")
        loaded = []
        for pair in self.pairs():
            correct = self.record(pair.id, pair.correct_ref["attempt"], pair.correct_ref["runs_offset"])
            incorrect = self.record(pair.id, pair.incorrect_ref["attempt"], pair.incorrect_ref["runs_offset"])
            loaded.append(LoadedPair(pair, correct, incorrect))
        return loaded


def load_pairs(results_dir: str | Path) -> list[LoadedPair]:
    """Every pair of a mining output directory with its correct and incorrect runs (spans, token ids, prompt ids)."""
    return RunDirectory(Path(results_dir)).loaded_pairs()
