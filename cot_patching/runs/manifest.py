"""The run's identity, typed: what `manifest.json` records, and every migration of older runs in one place.

A mining run's manifest says what decided its tokens: the settings (`mining.settings.MineSettings.to_json`), the
model actually loaded (including any out-of-memory fallback), one session per `mine` call that wrote to it, and
what later rewrote it (`merge`'s shards, `repair`'s relabellings). Every reader goes through `RunManifest.load`, so
a run written before a field existed reads with the value every such run had (`SETTINGS_BEFORE_RECORDED`,
`RunManifest.backend`), decided here and nowhere else.

Version history (`MANIFEST_VERSION`):
    1: every run written before the version was recorded (settings may lack backend, trace_rules_version,
       batch_size; the model may lack backend and fallback_from; sessions may lack decode_path).
    2: the version is recorded; `mine` stamps attempts with the model it loaded and refuses to resume on another
       model revision.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cot_patching.runs.artifacts import MANIFEST_FILE
from cot_patching.runs.environment import NUMERICS_PACKAGES, installed_versions
from cot_patching.runs.files import ArtifactError, read_json_file, write_json

MANIFEST_VERSION = 2
BRIDGE_BACKEND = "bridge"  # `models.backends.BRIDGE`: every run before backends were recorded decoded on it

# Settings added after runs were first written, with the value every earlier run had (a missing backend is the
# model's recorded one when there is one: `RunManifest.from_json`).
SETTINGS_BEFORE_RECORDED: dict[str, Any] = {"backend": BRIDGE_BACKEND, "trace_rules_version": 1, "batch_size": 1}


@dataclass(frozen=True)
class ModelIdentity:
    """The model a run loaded: its name, file or hub revision, numerics, tokenizer hash and shape."""

    name: str | None = None
    source: str | None = None
    path: str | None = None
    revision: str | None = None
    dtype: str | None = None
    device: str | None = None
    backend: str | None = None
    tokenizer_sha256: str | None = None
    n_layers: int | None = None
    d_model: int | None = None
    fallback_from: tuple[dict[str, str], ...] = ()  # models that ran out of memory before this one loaded
    extra: dict[str, Any] = field(default_factory=dict)  # fields this version does not type, kept verbatim

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ModelIdentity:
        """Read a manifest's `model` object (missing: every field unknown)."""
        data = dict(data or {})
        typed = {f.name for f in fields(cls)} - {"extra", "fallback_from"}
        return cls(**{k: data.pop(k) for k in list(data) if k in typed},
                   fallback_from=tuple(data.pop("fallback_from", None) or ()), extra=data)

    def to_json(self) -> dict[str, Any]:
        """The `model` object as the manifest records it."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "fallback_from")}
        return {**out, "fallback_from": list(self.fallback_from), **self.extra}


@dataclass(frozen=True)
class Session:
    """One `mine` call that wrote to the run: the model it loaded, its decode path, environment and argv."""

    model: ModelIdentity | None = None
    decode_path: str | None = None  # runs before decode paths were recorded: None
    environment: dict[str, Any] = field(default_factory=dict)
    argv: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    shard: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Session:
        """Read one entry of the manifest's `sessions`."""
        data = dict(data)
        model = data.pop("model", None)
        return cls(model=None if model is None else ModelIdentity.from_json(model),
                   decode_path=data.pop("decode_path", None), environment=data.pop("environment", None) or {},
                   argv=tuple(data.pop("argv", None) or ()), options=data.pop("options", None) or {},
                   shard=data.pop("shard", None), extra=data)

    def to_json(self) -> dict[str, Any]:
        """The session as the manifest records it."""
        return {"model": None if self.model is None else self.model.to_json(), "decode_path": self.decode_path,
                "environment": self.environment, "argv": list(self.argv), "options": self.options,
                "shard": self.shard, **self.extra}

    @property
    def versions(self) -> dict[str, str | None]:
        """The package versions this session ran with ({} when unrecorded)."""
        return dict(self.environment.get("versions") or {})


@dataclass(frozen=True)
class RunManifest:
    """A mining run's manifest: settings (older runs' missing ones filled in), model, sessions, shards, repairs."""

    settings: dict[str, Any]
    model: ModelIdentity = field(default_factory=ModelIdentity)
    sessions: tuple[Session, ...] = ()
    shards: tuple[dict[str, Any], ...] = ()  # `merge`: one entry per merged shard
    merge: dict[str, Any] | None = None  # `merge`: its argv, counts and dropped problems
    repairs: tuple[dict[str, Any], ...] = ()  # `repair`: one entry per relabelling
    version: int = MANIFEST_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # top-level keys this version does not type, kept verbatim

    def __post_init__(self) -> None:
        if not isinstance(self.version, int) or not 1 <= self.version <= MANIFEST_VERSION:
            raise ArtifactError(f"manifest version {self.version!r} is not one this cot-patching reads "
                                f"(1..{MANIFEST_VERSION}); upgrade cot-patching")

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = MANIFEST_FILE) -> RunManifest:
        """Read a manifest object, migrating what older runs did not record."""
        data = dict(data)
        settings = data.pop("settings", None)
        if not isinstance(settings, dict):
            raise ArtifactError(f"{where} records no settings")
        sessions = data.pop("sessions", None)
        sessions = [] if sessions is None else sessions
        if not isinstance(sessions, list) or not all(isinstance(s, dict) for s in sessions):
            raise ArtifactError(f"{where}: sessions is not a list of session objects")
        model = data.pop("model", None)
        if model is not None and not isinstance(model, dict):
            raise ArtifactError(f"{where}: model is not an object")
        identity = ModelIdentity.from_json(model)
        before = {**SETTINGS_BEFORE_RECORDED, "backend": identity.backend or SETTINGS_BEFORE_RECORDED["backend"]}
        return cls(settings={**before, **settings}, model=identity,
                   sessions=tuple(Session.from_json(s) for s in sessions),
                   shards=tuple(data.pop("shards", None) or ()), merge=data.pop("merge", None),
                   repairs=tuple(data.pop("repairs", None) or ()), version=data.pop("version", 1), extra=data)

    @classmethod
    def load(cls, root: str | Path) -> RunManifest:
        """The manifest of a run directory (an `ArtifactError` when it is missing or not a manifest)."""
        path = Path(root) / MANIFEST_FILE
        if not path.exists():
            raise ArtifactError(f"{root} has no {MANIFEST_FILE}")
        return cls.from_json(read_json_file(path, dict), str(path))

    def to_json(self) -> dict[str, Any]:
        """The manifest object as written (always at this version)."""
        out: dict[str, Any] = {"version": MANIFEST_VERSION, "settings": self.settings, "model": self.model.to_json(),
                               "sessions": [s.to_json() for s in self.sessions]}
        if self.shards:
            out["shards"] = list(self.shards)
        if self.merge is not None:
            out["merge"] = self.merge
        if self.repairs:
            out["repairs"] = list(self.repairs)
        return {**out, **self.extra}

    def save(self, root: str | Path) -> None:
        """Write the manifest atomically (fsynced temporary file, then rename)."""
        write_json(Path(root) / MANIFEST_FILE, self.to_json())

    @property
    def model_name(self) -> str:
        """The model the run was asked to mine (`--model`), as recorded in its settings."""
        name = self.settings.get("model")
        if not isinstance(name, str):
            raise ArtifactError(f"{MANIFEST_FILE} names no model")
        return name

    @property
    def attempt_model(self) -> str:
        """The model name every attempt record carries: the requested one, or the one an out-of-memory fallback
        loaded instead (`mining.miner.loaded_model_name`)."""
        return str(self.model.name) if self.model.fallback_from and self.model.name else self.model_name

    @property
    def backend(self) -> str:
        """The TransformerLens backend the run decoded on (runs before backends were recorded: the bridge)."""
        return str(self.settings.get("backend") or self.model.backend or BRIDGE_BACKEND)

    @property
    def last_session(self) -> Session:
        """The latest `mine` call's session (an empty one for a run that recorded none)."""
        return self.sessions[-1] if self.sessions else Session()

    def recorded_versions(self) -> dict[str, set[str]]:
        """Each package's versions over all sessions (a resumed or merged run may have several)."""
        out: dict[str, set[str]] = {}
        for session in self.sessions:
            for package, value in session.versions.items():
                if value is not None:
                    out.setdefault(package, set()).add(str(value))
        return out

    def version_drift(self) -> list[str]:
        """One line per numerics package whose installed version no session of the run was mined with."""
        recorded = self.recorded_versions()
        installed = installed_versions()
        return [f"{package} {installed[package]} is installed; the run was mined with "
                f"{', '.join(sorted(recorded[package]))}"
                for package in NUMERICS_PACKAGES if package in recorded and installed[package] not in recorded[package]]


def recorded_backend(root: str | Path) -> str | None:
    """The backend a results directory was mined with (None: it has no manifest yet)."""
    if not (Path(root) / MANIFEST_FILE).exists():
        return None
    return RunManifest.load(root).backend
