"""The software and hardware a run records: package versions that decide numerics, and the device."""

from __future__ import annotations

from typing import Any

RECORDED_PACKAGES = ("torch", "transformers", "transformer-lens", "cot-patching", "gguf", "tokenizers")


# The packages whose version decides the tokens a replay produces (cot-patching's own rules are versioned apart).
NUMERICS_PACKAGES = ("torch", "transformers", "transformer-lens", "gguf", "tokenizers")


def installed_versions() -> dict[str, str | None]:
    """The installed version of each package a run records (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def environment_facts() -> dict[str, Any]:
    """Versions of the software that decides numerics, and the device it ran on."""
    import platform

    import torch

    versions = installed_versions()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": gpu,
        "cuda": torch.version.cuda,
        "torch_num_threads": torch.get_num_threads(),
    }
