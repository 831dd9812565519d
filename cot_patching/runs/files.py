"""Crash-safe file I/O: fsynced appends, atomic rewrites, and readers whose errors name the file and line."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


class ArtifactError(RuntimeError):
    """An output directory whose files are missing, inconsistent or unusable."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same folder, fsync and rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder, fsync and rename (a failure leaves no temp)."""
    path = Path(path)
    tmp = ""  # none yet: a failed mkstemp leaves nothing to remove
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
        fsync_directory(path.parent)  # the rename itself survives a power loss only once its folder is synced
    except OSError as err:  # named after `path`: the temp file's name would only confuse
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, f"cannot write {path}: {err.strerror}; it is unchanged") from None
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_directory(folder: Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def drop_torn_tail(path: Path) -> int:
    """Cut a last line that a kill left without its newline; return how many bytes were dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    truncate_fsynced(path, keep)
    return len(data) - keep


def truncate_fsynced(path: Path, size: int) -> None:
    """Cut the file to `size` bytes, if it is longer, and fsync it."""
    if path.exists() and path.stat().st_size > size:
        with open(path, "r+b") as handle:
            handle.truncate(size)
            handle.flush()
            os.fsync(handle.fileno())


def fsync_file(path: Path) -> None:
    """Flush a file that was written by another library (safetensors, tokenizers) to disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


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


class FsyncedAppender:
    """An append-only file held open: each write lands whole on disk (fsynced) before its byte offset is returned."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle = open(self.path, "ab")

    def append_bytes(self, data: bytes) -> int:
        """Append `data`, fsync, and return the offset it starts at."""
        offset = self._handle.seek(0, os.SEEK_END)
        self._handle.write(data)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        return offset

    def close(self) -> None:
        """Close the file."""
        self._handle.close()

    def __enter__(self) -> FsyncedAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
