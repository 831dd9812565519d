"""What decides a localization's rollouts (`LocalizeSettings`), and the rule by which a resumed localization may go
on: the same run, pairs and model, and settings equal to the recorded ones or extended where every record already
written stays valid (more rollouts before the forking phase, other fork settings before it begins).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from cot_patching.decoding.sampling import check_temperature
from cot_patching.localization.stats import Estimate
from cot_patching.mining.sharding import parse_shard
from cot_patching.runs.files import read_json_file

SETTINGS_FILE = "settings.json"
FORK_PLAN_FILE = "forks.plan.json"
ROLLOUTS_PREFIX = "rollouts"


class LocalizeError(RuntimeError):
    """A localization that cannot start or continue as asked."""


@dataclass(frozen=True)
class LocalizeSettings:
    """Everything that decides which rollouts a localization decodes; a resumed localization must match it."""

    rollouts: int = 100  # R: rollouts per step boundary (at most, under adaptive stopping)
    temperature: float = 0.7
    top_p: float = 0.95
    batch_size: int = 100  # slots per forward
    fork_rollouts: int = 30  # N: continuations per alternative token inside k* (0: no forking phase)
    fork_threshold: float = 0.05  # alternatives with p above it (untempered) are tried
    max_new_tokens: int = 256  # the run's: a rollout's trace (prefix + new tokens) holds at most this many
    strict_format: bool = False  # the run's parsing mode
    shard: str | None = None  # "K/N": pairs K, K+N, ... of the run
    # rounds: the rollout counts per prefix at which a round ends (rollouts r in [previous, bound) form a round;
    # the last is `rollouts`); () means one round. After every round but the last, a prefix whose Wilson 95%
    # interval is at most 2 * stop_width wide gets no more rollouts (None: every prefix gets all R).
    rounds: tuple[int, ...] = ()
    stop_width: float | None = None

    def __post_init__(self) -> None:
        for name in ("rollouts", "batch_size", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        rounds = tuple(self.rounds) or (self.rollouts,)
        object.__setattr__(self, "rounds", rounds)
        if any(isinstance(b, bool) or not isinstance(b, int) for b in rounds) or list(rounds) != sorted(set(rounds)) \
                or rounds[0] < 1 or rounds[-1] != self.rollouts:
            raise ValueError(f"rounds must be increasing rollout counts ending at --rollouts {self.rollouts}, got "
                             f"{list(rounds)}")
        if self.stop_width is not None and not 0 < self.stop_width < 0.5:
            raise ValueError(f"--stop-width must be in (0, 0.5), got {self.stop_width!r}")
        if isinstance(self.fork_rollouts, bool) or not isinstance(self.fork_rollouts, int) or self.fork_rollouts < 0:
            raise ValueError(f"--fork-rollouts must be an integer >= 0, got {self.fork_rollouts!r}")
        if check_temperature(self.temperature) == 0:
            raise ValueError("--temperature must be > 0: greedy rollouts of one prefix are all the same")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p!r}")
        if not 0 < self.fork_threshold < 1:
            raise ValueError(f"--fork-threshold must be in (0, 1), got {self.fork_threshold!r}")
        if self.shard is not None:
            parse_shard(self.shard)

    def to_json(self) -> dict[str, Any]:
        """The settings as recorded in settings.json."""
        return {**asdict(self), "rounds": list(self.rounds)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LocalizeSettings:
        """Settings read back from settings.json (one written before rounds existed had one round, no stopping)."""
        return cls(**{**data, "rounds": tuple(data.get("rounds") or ())})


def rounds_for(rollouts: int, round_size: int | None) -> tuple[int, ...]:
    """The round bounds of R rollouts in rounds of `round_size` (None: one round)."""
    if round_size is None or round_size >= rollouts:
        return (rollouts,)
    if round_size < 1:
        raise ValueError(f"--round-size must be >= 1, got {round_size}")
    return tuple(range(round_size, rollouts, round_size)) + (rollouts,)


def still_open(estimate: Estimate | None, stop_width: float | None) -> bool:
    """Whether a prefix gets another round: no stopping rule, or its interval is still wider than 2 * stop_width."""
    if stop_width is None or estimate is None:
        return True
    low, high = estimate.interval
    return (high - low) / 2 > stop_width


EXTENDABLE = ("rollouts", "rounds", "stop_width", "fork_rollouts", "fork_threshold")


def forks_started(out_dir: Path) -> bool:
    """Whether any shard's forking phase has begun (its plan is written before its first group)."""
    return any(out_dir.glob(FORK_PLAN_FILE.replace(".json", "*.json")))


def reconcile(recorded: LocalizeSettings, wanted: LocalizeSettings, forks_begun: bool) -> LocalizeSettings:
    """The settings to go on with: the recorded ones, extended to more rollouts or other fork settings where that
    keeps every record already written valid; LocalizeError otherwise."""
    fixed = [k for k in wanted.to_json() if k not in EXTENDABLE and k != "shard"
             and getattr(recorded, k) != getattr(wanted, k)]
    if fixed:
        raise LocalizeError(f"was localized with different settings ({', '.join(fixed)})")
    forks = [k for k in ("fork_rollouts", "fork_threshold") if getattr(recorded, k) != getattr(wanted, k)]
    if forks and forks_begun:
        raise LocalizeError(f"was localized with different settings ({', '.join(forks)}) and its forking phase has "
                            "begun")
    if wanted.rollouts < recorded.rollouts:
        raise LocalizeError(f"was localized with different settings (rollouts: {recorded.rollouts} recorded, fewer "
                            "asked)")
    if wanted.rollouts == recorded.rollouts:
        if wanted.stop_width != recorded.stop_width:
            raise LocalizeError("was localized with different settings (stop_width)")
        rounds = recorded.rounds
    else:
        if forks_begun:
            raise LocalizeError("was localized with different settings (rollouts) and its forking phase has begun: "
                                "step rollouts can only be added before it")
        if wanted.stop_width != recorded.stop_width and len(recorded.rounds) > 1:
            raise LocalizeError("was localized with different settings (stop_width) over several rounds")
        rounds = recorded.rounds + tuple(b for b in wanted.rounds if b > recorded.rollouts)
    return replace(wanted, rounds=rounds)


def check_settings(out_dir: Path, settings: LocalizeSettings, identity: dict[str, Any],
                   pair_ids: Sequence[str]) -> tuple[dict[str, Any], LocalizeSettings]:
    """Refuse a localization folder written with other settings, pairs or model; the settings record to keep and
    the settings to go on with (the recorded ones, or those extended as `reconcile` allows)."""
    path = out_dir / SETTINGS_FILE
    wanted: dict[str, Any] = {"pairs": list(pair_ids), "model": identity}
    if not path.exists():
        if any(out_dir.glob(f"{ROLLOUTS_PREFIX}*.jsonl")):
            raise LocalizeError(f"{out_dir} holds rollouts but no {SETTINGS_FILE}: not a localization of ours; "
                                "use another --out")
        return {"settings": _settings_json(settings), **wanted, "sessions": []}, settings
    recorded = read_json_file(path, dict)
    for name in ("pairs", "model"):
        if recorded.get(name) != wanted[name]:
            raise LocalizeError(f"{out_dir} was localized with different {name}; use another --out or the same flags")
    try:
        before = LocalizeSettings.from_json({**recorded.get("settings", {}), "shard": settings.shard})
    except (TypeError, ValueError) as error:
        raise LocalizeError(f"{path}: unreadable settings ({error})") from error
    try:
        effective = reconcile(before, settings, forks_started(out_dir))
    except LocalizeError as error:
        raise LocalizeError(f"{out_dir} {error}; use another --out or the same flags") from None
    return {**recorded, "settings": _settings_json(effective)}, effective


def _settings_json(settings: LocalizeSettings) -> dict[str, Any]:
    return {k: v for k, v in settings.to_json().items() if k != "shard"}


def model_identity(info: dict[str, Any]) -> dict[str, Any]:
    """The parts of a model's identity a rollout depends on."""
    identity = {k: info.get(k) for k in ("name", "revision", "dtype", "backend", "tokenizer_sha256")}
    return {**identity, "device_kind": str(info.get("device", "")).split(":")[0]}
