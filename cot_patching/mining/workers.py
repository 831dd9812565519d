"""Several devices of one machine: one `cot-patching mine --shard K/N` process per device, one combined progress
line, then a merge. Each worker is an ordinary, resumable shard run; a worker that dies can be rerun alone."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from cot_patching.mining.sharding import Shard
from cot_patching.runs.directory import RunDirectory


def parse_devices(text: str) -> list[str]:
    """`cuda:0,cuda:1`, `cpu,cpu` or `all` (every visible CUDA device) into a device list."""
    if text.strip() == "all":
        import torch

        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError("--devices all: no CUDA device is visible")
        return [f"cuda:{index}" for index in range(count)]
    devices = [part.strip() for part in text.split(",") if part.strip()]
    if not devices:
        raise ValueError(f"--devices must list devices (cuda:0,cuda:1) or be 'all', got {text!r}")
    return devices


@dataclass
class Worker:
    """One shard's process: its device, directory, log and exact command line."""

    shard: Shard
    device: str
    outdir: Path
    command: list[str]
    n_problems: int
    process: subprocess.Popen[bytes] | None = None
    offset: int = 0
    attempts: int = 0
    tokens: int = 0
    ids: set[str] = field(default_factory=set)
    started_tokens: int | None = None
    first_write: tuple[float, int] | None = None
    ended: float | None = None

    @property
    def log(self) -> Path:
        """Where the worker's output goes."""
        return self.outdir.with_suffix(".log")

    def shell_command(self) -> str:
        """The command that runs (or resumes) this worker alone."""
        return shlex.join(self.command)

    def poll_files(self) -> None:
        """Read the runs appended since the last poll (complete lines only)."""
        path = RunDirectory(self.outdir).runs_path
        if not path.is_file():
            return
        with open(path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            self.attempts += 1
            self.tokens += len(record.get("token_ids") or [])
            self.ids.add(record.get("id"))
        self.offset += end

    def pairs(self) -> int:
        """Pairs this shard has found so far."""
        path = RunDirectory(self.outdir).pairs_path
        return path.read_bytes().count(b"\n") if path.is_file() else 0


def make_workers(mine_args: Sequence[str], devices: Sequence[str], outdir: Path,
                 problems_per_shard: Sequence[int]) -> list[Worker]:
    """One worker per device: shard k of N into OUTDIR/shards/shard-k on device k."""
    count = len(devices)
    workers = []
    for index, device in enumerate(devices):
        shard_dir = RunDirectory(outdir).shards_dir / f"shard-{index}"
        command = [sys.executable, "-m", "cot_patching.cli", "mine", *mine_args, "--device", device,
                   "--shard", f"{index}/{count}", "--outdir", str(shard_dir), "--no-progress"]
        workers.append(Worker(Shard(index, count), device, shard_dir, command, problems_per_shard[index]))
    return workers


def run_workers(workers: Sequence[Worker], show: Callable[[str], None] | None = None, poll_s: float = 2.0
                ) -> list[int]:
    """Start every worker, show one combined status line while they run, and return their exit codes."""
    for worker in workers:
        worker.outdir.parent.mkdir(parents=True, exist_ok=True)
        with open(worker.log, "ab") as log:
            worker.process = subprocess.Popen(worker.command, stdout=log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    start_tokens: int | None = None
    while True:
        codes = [worker.process.poll() for worker in workers if worker.process is not None]
        now = time.monotonic()
        for worker, code in zip(workers, codes):
            worker.poll_files()
            if worker.started_tokens is None:
                worker.started_tokens = worker.tokens  # resumed work is not this call's throughput
            elif worker.first_write is None and worker.tokens > worker.started_tokens:
                worker.first_write = (now, worker.tokens)
            if code is not None and worker.ended is None:
                worker.ended = now
        if start_tokens is None:
            start_tokens = sum(w.tokens for w in workers)
        if show is not None:
            show(status_line(workers, time.monotonic() - started, start_tokens))
        if all(code is not None for code in codes):
            return [code for code in codes if code is not None]
        time.sleep(poll_s)


def status_line(workers: Sequence[Worker], elapsed: float, start_tokens: int) -> str:
    """pairs, problems done, attempts, tok/s and ETA over all workers."""
    total = sum(w.n_problems for w in workers)
    done = sum(max(0, len(w.ids) - (1 if w.process is not None and w.process.poll() is None else 0))
               for w in workers)
    tokens = sum(w.tokens for w in workers) - start_tokens
    rate = tokens / elapsed if elapsed > 0 else 0.0
    per_problem = elapsed / done if done else None
    eta = f"{per_problem * (total - done) / 60:.1f} min" if per_problem and done < total else "-"
    running = sum(1 for w in workers if w.process is not None and w.process.poll() is None)
    return (f"{running}/{len(workers)} workers running | pairs {sum(w.pairs() for w in workers)} | problems "
            f"{done}/{total} | attempts {sum(w.attempts for w in workers)} | {rate:.1f} tok/s | ETA {eta}")


def throughput_line(workers: Sequence[Worker], elapsed: float) -> str:
    """This call's new tokens and tok/s: end to end, and summed over workers from each one's first write."""
    tokens = sum(w.tokens - (w.started_tokens or 0) for w in workers)
    steady = 0.0
    for worker in workers:
        if worker.first_write is not None and worker.ended is not None and worker.ended > worker.first_write[0]:
            steady += (worker.tokens - worker.first_write[1]) / (worker.ended - worker.first_write[0])
    return (f"throughput: {tokens} new tokens in {elapsed:.1f} s on {len(workers)} workers = {tokens / elapsed:.1f} "
            f"tok/s end to end (model loads included); {steady:.1f} tok/s summed over workers, each from its first "
            f"written attempt to its exit")


def failure_report(workers: Sequence[Worker], codes: Sequence[int]) -> list[str]:
    """One paragraph per failed worker: exit code, log tail, and the command that resumes it alone."""
    lines = []
    for worker, code in zip(workers, codes):
        if code == 0:
            continue
        tail = worker.log.read_text("utf-8", errors="replace").strip().splitlines()[-3:] if worker.log.exists() else []
        lines.append(f"worker {worker.shard} on {worker.device} failed (exit {code}); log {worker.log}:")
        lines.extend(f"    {line}" for line in tail)
        lines.append(f"  resume it alone: {worker.shell_command()}")
    return lines


def mine_flags(options: Any) -> list[str]:
    """The mine flags that reproduce `options` in a worker (device, shard and outdir are set per worker)."""
    flags = ["--problems", options.problems, "--model", options.model, "--max-tries", str(options.max_tries),
             "--min-pairs", str(options.min_pairs), "--temperature-seq", options.temperature_seq,
             "--top-p", repr(float(options.top_p)), "--max-new-tokens", str(options.max_new_tokens),
             "--dtype", options.dtype, "--backend", options.backend, "--batch-size", str(options.batch_size)]
    for name in ("load_in_4bit", "strict_format", "pair_unparsed"):
        if getattr(options, name):
            flags.append("--" + name.replace("_", "-"))
    return flags
