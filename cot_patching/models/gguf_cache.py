"""A GGUF model converted once: its dequantized Hugging Face form kept on disk, so that later loads skip the GGUF.

Reading a GGUF through transformers parses the file's metadata three times (config, tokenizer, weights) and
dequantizes every tensor: about 20 s for the 98 MB embedded SmolLM2 on two CPU cores, and every `mine`,
`reproduce`, `validate` or `localize` process pays it again. The first load converts the file with transformers'
own `gguf_file=` path (fp32 weights, tokenizer, chat template, generation config) into an entry of the cache; later
loads read that entry as a plain Hugging Face directory (under a second). The weights are the same tensors bit for
bit, the tokenizer has the same definition, and a run still records the GGUF file's own sha256.

An entry is keyed by the GGUF's sha256 and the transformers and gguf versions that converted it, is written to a
temporary folder and renamed into place (a killed conversion leaves nothing half-written), and names the sha256 of
each of its files, which every load checks: a damaged entry is converted again. Set `COT_PATCHING_GGUF_CACHE` to a
folder to move the cache (default `$XDG_CACHE_HOME/cot_patching/gguf`, else `~/.cache/cot_patching/gguf`), or to
`off` to read the GGUF every time. An entry takes the model's fp32 size (4 bytes a parameter).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from cot_patching.runs.files import (
    ArtifactError,
    file_sha256,
    fsync_directory,
    fsync_file,
    read_json_file,
    write_json,
)

CACHE_ENV = "COT_PATCHING_GGUF_CACHE"
ENTRY_FILE = "entry.json"
ENTRY_FORMAT = 1


def gguf_cache_root() -> Path | None:
    """The folder holding converted GGUF models, or None when `COT_PATCHING_GGUF_CACHE=off`."""
    setting = os.environ.get(CACHE_ENV, "").strip()
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    if setting:
        return Path(setting).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "cot_patching" / "gguf"


def model_file_sha256(path: Path) -> str:
    """sha256 of a model file (a GGUF or an entry's file), hashed once per process while its size and modification
    time stay the same: one load asks for it several times (tokenizer, weights, the run's record)."""
    stat = path.stat()
    return _hashed(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _hashed(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def entry_name(gguf_sha256: str) -> str:
    """The folder name of a GGUF's entry: its sha256 and the versions that convert it."""
    from importlib.metadata import version

    return f"{gguf_sha256}-transformers{version('transformers')}-gguf{version('gguf')}"


def converted_gguf(gguf_path: Path, gguf_sha256: str) -> Path | None:
    """The Hugging Face folder holding `gguf_path` dequantized (converted now if the cache has no sound entry);
    None when the cache is off or cannot be written, and the GGUF is then read directly."""
    root = gguf_cache_root()
    if root is None:
        return None
    entry = root / entry_name(gguf_sha256)
    if entry.is_dir():
        if entry_is_sound(entry, gguf_sha256):
            return entry
        print(f"the converted copy of {gguf_path.name} in {entry} is damaged; converting the GGUF again",
              file=sys.stderr)
    try:
        return _convert(gguf_path, gguf_sha256, entry)
    except OSError as err:
        print(f"cannot keep a converted copy of {gguf_path.name} in {root} ({err.strerror or err}); "
              "reading the GGUF directly", file=sys.stderr)
        return None


def entry_is_sound(entry: Path, gguf_sha256: str) -> bool:
    """Whether an entry is complete, of this GGUF, and every file it lists still has its recorded sha256."""
    try:
        record = read_json_file(entry / ENTRY_FILE, dict)
    except ArtifactError:
        return False
    files = record.get("files")
    if record.get("format") != ENTRY_FORMAT or record.get("gguf_sha256") != gguf_sha256 or not isinstance(files, dict):
        return False
    return all((entry / name).is_file() and model_file_sha256(entry / name) == digest for name, digest in files.items())


def _convert(gguf_path: Path, gguf_sha256: str, entry: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name[:16]}.", suffix=".tmp", dir=entry.parent))
    try:
        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        hf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        _save_dequantized(hf_model, tokenizer, staging)
        files = {}
        for path in sorted(staging.iterdir()):
            files[path.name] = file_sha256(path)
            fsync_file(path)
        write_json(staging / ENTRY_FILE, {"format": ENTRY_FORMAT, "gguf_sha256": gguf_sha256, "gguf_file": name,
                                          "files": files})
        if entry.exists():  # a damaged entry (a sound one was returned before converting)
            shutil.rmtree(entry)
        try:
            staging.rename(entry)
        except OSError:
            if entry_is_sound(entry, gguf_sha256):  # another process converted the same file meanwhile
                return entry
            raise
        fsync_directory(entry.parent)
        return entry
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _save_dequantized(hf_model: Any, tokenizer: Any, folder: Path) -> None:
    """Config, generation config, weights and tokenizer of a GGUF-loaded model, as a plain Hugging Face folder.

    transformers refuses `save_pretrained` on a model that came from a GGUF (its config still names the gguf
    quantizer, though the weights are dequantized), so the config is saved without that entry and the weights
    through safetensors, which keeps tied tensors tied."""
    import copy

    from safetensors.torch import save_model

    config = copy.deepcopy(hf_model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.save_pretrained(folder)
    if getattr(hf_model, "generation_config", None) is not None:
        hf_model.generation_config.save_pretrained(folder)
    save_model(hf_model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)

