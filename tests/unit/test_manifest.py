"""RunManifest: typed reading of manifest.json, every older run's migration, round trips that lose nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cot_patching.models.backends import BRIDGE
from cot_patching.runs import artifacts
from cot_patching.runs.files import ArtifactError
from cot_patching.runs.manifest import MANIFEST_VERSION, SETTINGS_BEFORE_RECORDED, RunManifest, recorded_backend

RESULTS = Path(__file__).resolve().parents[2] / "results"
COMMITTED = sorted(p.parent for p in RESULTS.glob("*/" + artifacts.MANIFEST_FILE))

V1 = {  # what the first runs wrote: no version, no backend/trace rules/batch size, sessions without decode_path
    "settings": {"model": "m", "problems_sha256": "x", "temperature_seq": [0.0, 0.9], "max_tries": 3,
                 "top_p": 0.95, "max_new_tokens": 256, "strict_format": False, "pair_unparsed": False},
    "model": {"name": "m", "revision": "sha256:ab", "dtype": "float32"},
    "sessions": [{"model": {"name": "m"}, "environment": {"versions": {"torch": "2.5.0"}}, "argv": ["mine"],
                  "options": {"min_pairs": 2}, "comment": "kept"}],
    "notes": "a key this version does not type",
}


def test_a_version_1_manifest_reads_with_what_those_runs_had() -> None:
    manifest = RunManifest.from_json(V1)
    assert manifest.version == 1
    assert {k: manifest.settings[k] for k in SETTINGS_BEFORE_RECORDED} == SETTINGS_BEFORE_RECORDED
    assert manifest.backend == BRIDGE == SETTINGS_BEFORE_RECORDED["backend"]
    assert manifest.last_session.decode_path is None and manifest.last_session.options == {"min_pairs": 2}
    assert manifest.recorded_versions() == {"torch": {"2.5.0"}}
    assert manifest.model.revision == "sha256:ab" and manifest.model.fallback_from == ()


def test_a_run_without_a_settings_backend_takes_the_models_recorded_one() -> None:
    hooked = {**V1, "model": {**V1["model"], "backend": "hooked"}}
    assert RunManifest.from_json(hooked).settings["backend"] == "hooked" == RunManifest.from_json(hooked).backend


def test_a_recorded_setting_wins_over_the_older_runs_default() -> None:
    data = json.loads(json.dumps(V1))
    data["settings"]["batch_size"] = 64
    assert RunManifest.from_json(data).settings["batch_size"] == 64


def test_writing_keeps_every_field_and_adds_only_the_version_and_migrated_defaults() -> None:
    written = RunManifest.from_json(V1).to_json()
    assert written["version"] == MANIFEST_VERSION
    assert written["notes"] == V1["notes"] and written["sessions"][0]["comment"] == "kept"
    assert written["settings"] == {**SETTINGS_BEFORE_RECORDED, **V1["settings"]}
    assert RunManifest.from_json(written).to_json() == written


@pytest.mark.parametrize("run", COMMITTED, ids=[p.name for p in COMMITTED])
def test_every_committed_manifest_round_trips(run: Path) -> None:
    raw = json.loads((run / artifacts.MANIFEST_FILE).read_text())
    written = RunManifest.load(run).to_json()
    for key, value in raw.items():
        if key == "settings":
            assert {k: written[key][k] for k in value} == value
        elif key == "model" and value is not None:
            assert {k: written[key][k] for k in value} == value
        elif key == "sessions":
            assert [{k: s[k] for k in old} for s, old in zip(written[key], value)] == value
        else:
            assert written[key] == value, key


def test_a_manifest_from_a_newer_cot_patching_is_refused() -> None:
    with pytest.raises(ArtifactError, match="upgrade cot-patching"):
        RunManifest.from_json({**V1, "version": MANIFEST_VERSION + 1})


@pytest.mark.parametrize("broken, message", [({"model": "m"}, "records no settings"),
                                             ({**V1, "sessions": {}}, "sessions is not a list"),
                                             ({**V1, "model": "m"}, "model is not an object")])
def test_a_broken_manifest_is_one_clear_error(broken: dict, message: str) -> None:
    with pytest.raises(ArtifactError, match=message):
        RunManifest.from_json(broken)


def test_the_attempt_model_is_the_fallback_only_after_one() -> None:
    assert RunManifest.from_json(V1).attempt_model == "m"
    fell_back = {**V1, "model": {"name": "smaller", "fallback_from": [{"model": "m", "reason": "CUDA OOM"}]}}
    assert RunManifest.from_json(fell_back).attempt_model == "smaller"


def test_save_then_load_and_the_backend_of_a_directory(tmp_path: Path) -> None:
    assert recorded_backend(tmp_path) is None
    RunManifest.from_json(V1).save(tmp_path)
    assert RunManifest.load(tmp_path) == RunManifest.from_json(RunManifest.from_json(V1).to_json())
    assert recorded_backend(tmp_path) == BRIDGE
