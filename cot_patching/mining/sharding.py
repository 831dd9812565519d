"""Split a problem file into N shards by a hash of each problem id: the same problem always lands in the same shard,
whatever else the file holds, so shards are stable under resume and across machines."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (written K/N, 0 <= K < N)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (isinstance(self.index, int) and isinstance(self.count, int) and 0 <= self.index < self.count):
            raise ValueError(f"--shard must be K/N with 0 <= K < N, got {self.index}/{self.count}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, problem_id: str) -> bool:
        """Whether this shard mines `problem_id`."""
        return shard_index(problem_id, self.count) == self.index


def parse_shard(text: str) -> Shard:
    """`K/N` (e.g. `0/4`) into a Shard."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be K/N with integers 0 <= K < N, got {text!r}") from None
    return Shard(index, count)


def shard_index(problem_id: str, count: int) -> int:
    """The shard (0..count-1) a problem id belongs to: sha256 of the id, modulo count."""
    digest = hashlib.sha256(f"cot-patching-shard:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def shard_problems(problems: Sequence[T], shard: Shard, key: str = "id") -> list[T]:
    """The problems of one shard, in file order."""
    return [problem for problem in problems if shard.holds(getattr(problem, key))]
