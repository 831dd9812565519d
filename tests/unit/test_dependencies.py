"""The install is bounded and locked: pyproject's upper bounds, the constraints files, README and CI agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
BOUNDED = ("torch", "transformers", "transformer-lens")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]


def _pins(name: str) -> dict[str, Version]:
    pins = {}
    for line in (ROOT / name).read_text("utf-8").splitlines():
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", line
            pins[requirement.name.lower().replace("_", "-")] = Version(specifier.version)
    return pins


def has_upper_bound(specifier: SpecifierSet) -> bool:
    """Whether a specifier set caps the version from above."""
    return any(spec.operator in ("<", "<=", "==", "~=") for spec in specifier)


def test_the_numerics_packages_have_upper_bounds() -> None:
    requirements = {Requirement(spec).name: Requirement(spec).specifier for spec in _project()["dependencies"]}
    for name in BOUNDED:
        assert has_upper_bound(requirements[name]), f"pyproject.toml: {name} {requirements[name]} has no upper bound"
    assert not has_upper_bound(SpecifierSet(">=4.56")), "negative control: a lower bound alone is not a bound"


@pytest.mark.parametrize("constraints, extra", [("constraints.txt", None), ("constraints-hooked.txt", "hooked")])
def test_every_pinned_version_satisfies_pyproject(constraints: str, extra: str | None) -> None:
    pins = _pins(constraints)
    specs = list(_project()["dependencies"]) + (_project()["optional-dependencies"][extra] if extra else [])
    for spec in specs:
        requirement = Requirement(spec)
        name = requirement.name.lower()
        assert name in pins, f"{constraints} pins no {name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"{constraints}: {name}=={pins[name]} is outside pyproject's {requirement.specifier}"
    assert all(name in pins for name in BOUNDED)


def test_readme_test_lines_are_what_ci_runs_and_install_through_the_constraints() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    ci = (ROOT / ".ci" / "run").read_text("utf-8")
    lines = [line for line in readme.splitlines() if line.startswith("pip install torch==") and "pytest" in line]
    assert len(lines) == 2
    for line in lines:
        install, tests = line.split(" && python -m pytest ")  # .ci/run installs one line while another tests
        assert install in ci, f"README test line's install is not what .ci/run runs: {install}"
        assert f"\npython -m pytest {tests}\n" in ci, f"README test line's tests are not what .ci/run runs: {tests}"
        assert re.search(r"pip install -c constraints(-hooked)?\.txt -e ", line), line
    lint = [line for line in readme.splitlines() if line.startswith("python -m pytest -m lint")]
    assert len(lint) == 1 and lint[0] in ci, "README's lint line is not what .ci/run runs"
    first = next(line for line in readme.splitlines() if "scripts/fetch_qwen_coder_gguf.sh &&" in line)
    assert "-c constraints.txt" in first
