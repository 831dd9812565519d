"""One holder of a run directory's lock, always: processes race for a stale lock and never overlap."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from pathlib import Path

from cot_patching.runs import artifacts
from cot_patching.runs.directory import RunInUseError, directory_lock

TRIALS = 50


def _contender(outdir: str, barrier: multiprocessing.synchronize.Barrier, log: str) -> None:
    barrier.wait()
    try:
        with directory_lock(Path(outdir)):
            start = time.monotonic()
            time.sleep(0.2)
            end = time.monotonic()
    except RunInUseError:
        line = f"refused {os.getpid()}\n"
    else:
        line = f"held {os.getpid()} {start} {end}\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, line.encode())
    os.close(fd)


def test_processes_racing_for_a_stale_lock_never_both_hold_it(tmp_path):
    context = multiprocessing.get_context("fork")
    dead = context.Process(target=os.getpid)
    dead.start()
    dead.join()
    overlaps, single = 0, 0
    for trial in range(TRIALS):
        outdir = tmp_path / f"run{trial}"
        outdir.mkdir()
        (outdir / artifacts.LOCK_FILE).write_text(f"{socket.gethostname()} {dead.pid}")  # what a kill -9 leaves
        n = 2 + trial % 3
        barrier = context.Barrier(n)
        log = str(outdir / "log")
        workers = [context.Process(target=_contender, args=(str(outdir), barrier, log)) for _ in range(n)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
            assert worker.exitcode == 0
        lines = Path(log).read_text().splitlines()
        assert len(lines) == n
        held = sorted((float(a), float(b)) for _, _, a, b in (line.split() for line in lines if line.startswith("held")))
        assert held, f"trial {trial}: nobody took the stale lock"
        overlaps += sum(held[i + 1][0] < held[i][1] for i in range(len(held) - 1))
        single += len(held) == 1
    assert overlaps == 0, f"{overlaps} times two processes held the lock at once"
    assert single >= TRIALS * 0.9, f"only {single}/{TRIALS} trials had exactly one holder"
