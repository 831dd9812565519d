"""Find a results directory's model for the commands that load it again: the recorded one or `--model`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer


@dataclass(frozen=True)
class RunModel:
    """The model spec to load for a run, the identity the run recorded, and the run's own name for it."""

    spec: str
    recorded: dict[str, Any]
    recorded_name: str


def run_model(root: Path, override: str | None) -> RunModel:
    """`--model` if given, else the recorded model (or its recorded absolute path); identity checked for files."""
    from cot_patching.models.loading import ModelLoadError, check_identity, resolve_model
    from cot_patching.runs.manifest import RunManifest

    manifest = RunManifest.load(root)
    name = manifest.model_name
    recorded = manifest.model.to_json()
    candidates = [override] if override else [name, recorded.get("path")]
    for spec in candidates:
        if not spec:
            continue
        try:
            source = resolve_model(spec)
        except ModelLoadError:
            if override:
                raise
            continue
        check_identity(source, recorded)
        if source.kind in ("gguf", "embedded"):
            spec = str(Path(str(source.path)) / str(source.gguf_file))
        return RunModel(spec=spec, recorded=recorded, recorded_name=name)
    raise ModelLoadError(
        f"the run's model {name!r} is not found from {Path.cwd()}; pass --model PATH_OR_ID "
        f"(it must have the recorded identity {recorded.get('revision') or recorded.get('tokenizer_sha256')})"
    )


def echo_model(spec: str) -> None:
    """Say which model file or id this command uses (stderr, so stdout stays the command's result)."""
    path = Path(spec)
    typer.echo(f"model: {path.resolve() if path.exists() else spec}", err=True)


def check_tokenizer(root: Path, found: RunModel, tokenizer: Any) -> None:
    """Refuse a tokenizer whose hash differs from the run's under the same transformers/tokenizers versions; warn
    when the versions differ too (the hash covers their serialization, which changes between releases)."""
    from cot_patching.models.loading import tokenizer_sha256
    from cot_patching.runs.environment import environment_facts
    from cot_patching.runs.files import ArtifactError
    from cot_patching.runs.manifest import RunManifest

    expected = found.recorded.get("tokenizer_sha256")
    if not expected or tokenizer_sha256(tokenizer) == expected:
        return
    mined = RunManifest.load(root).last_session.versions
    now = environment_facts()["versions"]
    changed = [f"{k} {mined.get(k)} -> {now.get(k)}" for k in ("transformers", "tokenizers") if mined.get(k) != now.get(k)]
    if not changed:
        raise ArtifactError(f"the tokenizer of {found.spec} is not the run's (tokenizer_sha256 differs)")
    typer.echo(f"warning: tokenizer hash differs from the run's, with {', '.join(changed)}; every decode is "
               "checked against the recorded text", err=True)


def run_tokenizer(root: Path, override: str | None) -> Any:
    """The run's tokenizer (from `--model` or the recorded model), its identity checked as `check_tokenizer` does."""
    from cot_patching.models.loading import load_tokenizer, resolve_model

    found = run_model(root, override)
    tokenizer = load_tokenizer(resolve_model(found.spec))
    check_tokenizer(root, found, tokenizer)
    return tokenizer


def load_run_model(root: Path, override: str | None, device: str | None, backend: str | None) -> tuple[RunModel, Any]:
    """The run's model loaded as it was mined (device, dtype, backend unless overridden), identity and tokenizer
    checked; the path used is echoed."""
    from cot_patching.models.loading import check_loaded_identity, load_model
    from cot_patching.runs.manifest import recorded_backend

    found = run_model(root, override)
    echo_model(found.spec)
    loaded = load_model(found.spec, device=device or found.recorded.get("device"), dtype=found.recorded.get("dtype"),
                        fallback=False, backend=backend or recorded_backend(root))
    check_loaded_identity(loaded.info, found.recorded)
    check_tokenizer(root, found, loaded.tokenizer)
    return found, loaded


def warn_version_drift(root: Path) -> None:
    """Warn on stderr for each numerics package installed at another version than the run was mined with."""
    from cot_patching.runs.files import ArtifactError
    from cot_patching.runs.manifest import RunManifest

    try:
        manifest = RunManifest.load(root)
    except ArtifactError:
        return  # validate reports a missing or damaged manifest itself; the other commands refuse it
    for line in manifest.version_drift():
        typer.echo(f"warning: {line}; tokens can differ (the versions of the committed runs: constraints.txt)",
                   err=True)
