"""Mining settings: one typed object per scope, the only place their defaults are written.

`MineSettings` decides what a run writes (a resumed run must match it; the manifest records it verbatim);
`MineOptions` is everything the `mine` command takes: the settings' fields as flags, plus where to read and write and
how to load the model. YAML (`--config`) and flags overlay `MineOptions`' defaults, which take the protocol's
values from `MineSettings`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from cot_patching.decoding.sampling import DecodeConfig, parse_temperature_seq, temperature_schedule
from cot_patching.mining.sharding import parse_shard
from cot_patching.models.backends import AUTO, BACKENDS
from cot_patching.models.loading import parse_device
from cot_patching.runs.manifest import RunManifest
from cot_patching.traces.analysis import TRACE_RULES_VERSION
from cot_patching.traces.prompt import PROMPT_TEMPLATE_SHA256


@dataclass(frozen=True)
class MineSettings:
    """Everything that decides what a mining run writes; a resumed run must match it exactly."""

    model: str
    problems_sha256: str
    temperature_seq: tuple[float, ...] = (0.0, 0.9, 1.0, 0.7, 0.5)  # T=0 once, then each non-zero T twice
    max_tries: int = 8
    top_p: float = 0.95
    max_new_tokens: int = 256
    strict_format: bool = False
    pair_unparsed: bool = False
    prompt_template_sha256: str = PROMPT_TEMPLATE_SHA256
    backend: str | None = None  # the TransformerLens class that decodes (None: the model's); replays use the same
    trace_rules_version: int = TRACE_RULES_VERSION  # parsing/scoring/span rules the labels were made with
    shard: str | None = None  # "K/N": this run mines shard K of N of the problem file (`cot_patching.mining.sharding`)
    batch_size: int = 1  # attempts decoded per forward (`decoding.batched`); 1 is the seed protocol's one at a time

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose {', '.join(BACKENDS)}")
        temperature_schedule(self.temperature_seq, self.max_tries)
        DecodeConfig(0.0, self.top_p, self.max_new_tokens)
        if any(t < 0 for t in self.temperature_seq):
            raise ValueError("temperatures must be >= 0")
        if self.shard is not None:
            parse_shard(self.shard)

    @classmethod
    def recorded(cls, manifest: RunManifest) -> MineSettings:
        """The settings a run's manifest records (older runs' missing ones filled in by `RunManifest`)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in manifest.settings.items() if k in names}
        try:
            return cls(**{**values, "temperature_seq": tuple(values.get("temperature_seq", ()))})
        except TypeError as err:
            raise ValueError(f"the run's manifest settings are incomplete: {err}") from None

    @property
    def schedule(self) -> list[float]:
        """The temperature of each attempt index."""
        return temperature_schedule(self.temperature_seq, self.max_tries)

    def to_json(self) -> dict[str, Any]:
        """The settings as recorded in the manifest."""
        data = asdict(self)
        data["temperature_seq"] = list(self.temperature_seq)
        data["schedule"] = self.schedule
        return data


@dataclass(frozen=True)
class MineOptions:
    """The `mine` command's options after built-in defaults, `--config` and flags are merged (in that order)."""

    problems: str = "data/problems.sample.json"
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    outdir: str = "results/"
    max_tries: int = MineSettings.max_tries
    min_pairs: int = 20
    temperature_seq: str = ",".join(str(t) for t in MineSettings.temperature_seq)
    top_p: float = MineSettings.top_p
    max_new_tokens: int = MineSettings.max_new_tokens
    device: str | None = None  # None: cuda if available
    dtype: str = "auto"
    load_in_4bit: bool = False
    strict_format: bool = MineSettings.strict_format
    pair_unparsed: bool = MineSettings.pair_unparsed
    backend: str = AUTO  # a resumed run's backend, else the installed TransformerLens's
    shard: str | None = MineSettings.shard
    batch_size: int = MineSettings.batch_size

    def __post_init__(self) -> None:
        for f in fields(self):
            value, kinds = getattr(self, f.name), _OPTION_TYPES[f.name]
            if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
                wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
                raise ValueError(f"--{f.name.replace('_', '-')} must be {wanted}, got {value!r}")
        if self.min_pairs < 1:
            raise ValueError(f"--min-pairs must be >= 1, got {self.min_pairs}")
        if self.max_tries < 1:
            raise ValueError(f"--max-tries must be >= 1, got {self.max_tries}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        parse_temperature_seq(self.temperature_seq)
        DecodeConfig(0.0, self.top_p, self.max_new_tokens)
        if self.shard is not None:
            parse_shard(self.shard)
        if self.device is not None:
            parse_device(self.device, available=False)  # a config for a GPU machine is valid anywhere

    def settings(self, problems_sha256: str, backend: str) -> MineSettings:
        """The run settings these options ask for, for a problem file of this hash on this backend."""
        return MineSettings(
            model=self.model, problems_sha256=problems_sha256,
            temperature_seq=parse_temperature_seq(self.temperature_seq), max_tries=self.max_tries,
            top_p=self.top_p, max_new_tokens=self.max_new_tokens, strict_format=self.strict_format,
            pair_unparsed=self.pair_unparsed, backend=backend, shard=self.shard, batch_size=self.batch_size,
        )


_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "problems": (str,), "model": (str,), "outdir": (str,), "max_tries": (int,), "min_pairs": (int,),
    "temperature_seq": (str,), "top_p": (int, float), "max_new_tokens": (int,), "device": (str, type(None)),
    "dtype": (str,), "load_in_4bit": (bool,), "strict_format": (bool,), "pair_unparsed": (bool,), "backend": (str,),
    "shard": (str, type(None)), "batch_size": (int,),
}

OPTION_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(MineOptions)}
