"""Cache residual-stream activations at the selected steps of every pair, and load them back lazily (SPEC §7)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor

from cot_patching.models.backends import BRIDGE
from cot_patching.models.loading import LoadedModel
from cot_patching.runs import artifacts
from cot_patching.runs.directory import load_pairs
from cot_patching.runs.files import (
    ArtifactError,
    append_fsynced,
    atomic_write_bytes,
    atomic_write_text,
    drop_torn_tail,
    file_sha256,
    read_json_file,
    read_jsonl_file,
    write_json,
)
from cot_patching.runs.pairing import LoadedPair
from cot_patching.runs.progress import progress_bar
from cot_patching.runs.records import RunRecord

HOOKS = ("resid_pre", "resid_mid", "resid_post")
TRACES = ("correct", "incorrect")
INDEX_FILE = artifacts.CACHE_INDEX_FILE
CONFIG_FILE = artifacts.CACHE_CONFIG_FILE
STORE_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32,
                "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16}


def hook_name(layer: int, hook: str) -> str:
    """The HookedTransformer-style hook name, e.g. `blocks.8.hook_resid_post`."""
    return f"blocks.{layer}.hook_{hook}"


@dataclass(frozen=True)
class CacheSettings:
    """Which activations a cache holds; a rerun into the same directory must use the same settings."""

    layers: tuple[int, ...]
    hooks: tuple[str, ...] = ("resid_post",)
    steps: str = "early,late"  # "early,late", "early", "late" or "all"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.layers or any(layer < 0 for layer in self.layers):
            raise ValueError(f"layers must be non-negative layer indices, got {self.layers}")
        unknown = [h for h in self.hooks if h not in HOOKS]
        if unknown or not self.hooks:
            raise ValueError(f"unknown hook(s) {unknown or self.hooks}; choose from {', '.join(HOOKS)}")
        if self.steps != "all" and (not self.steps or set(self.steps.split(",")) - {"early", "late"}):
            raise ValueError(f"--steps must be 'early,late', 'early', 'late' or 'all', got {self.steps!r}")
        if self.dtype not in STORE_DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose bf16 or fp32")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype tensors are stored in."""
        return STORE_DTYPES[self.dtype]

    def to_json(self) -> dict[str, Any]:
        """The settings as recorded in cache_config.json."""
        return {**asdict(self), "layers": list(self.layers), "hooks": list(self.hooks),
                "dtype": str(self.torch_dtype).removeprefix("torch.")}


def parse_layers(text: str, n_layers: int) -> tuple[int, ...]:
    """`0,8,16` or `all` into layer indices, each checked against the model's depth."""
    if text.strip() == "all":
        return tuple(range(n_layers))
    try:
        layers = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--layers {text!r} is not a comma-separated list of integers or 'all'") from None
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad or not layers:
        raise ValueError(f"--layers {text!r}: the model has layers 0..{n_layers - 1}")
    repeated = sorted({layer for layer in layers if layers.count(layer) > 1})
    if repeated:
        raise ValueError(f"--layers {text!r} names layer{'s' if len(repeated) > 1 else ''} "
                         f"{', '.join(map(str, repeated))} more than once")
    return layers


@dataclass(frozen=True)
class SelectedStep:
    """A step whose positions are cached: its label (`early`, `late`, `step3`) and token range in the trace."""

    label: str
    step_idx: int
    tok_start: int
    tok_end: int


def steps_to_cache(pair: LoadedPair, trace: str, steps: str, strict_format: bool = False) -> list[SelectedStep]:
    """The steps of one trace to cache: the pair's selection for the correct trace, the same rule on the incorrect."""
    record = pair.trace(trace)
    by_idx = {span["step_idx"]: span for span in record.step_spans}
    if steps == "all":
        chosen = [(f"step{idx}", idx) for idx in sorted(by_idx)]
    else:
        selected = pair.selected_steps(trace, strict_format)
        if selected is None:
            return []
        early, late = selected
        wanted = {"early": early, "late": late}
        chosen = [(label, wanted[label]) for label in steps.split(",")]
    missing = [idx for _, idx in chosen if idx not in by_idx]
    if missing:
        raise ArtifactError(f"{pair.id}: the {trace} trace (attempt {record.attempt}) has no step "
                                      f"{missing[0]} (its steps: {sorted(by_idx)}); pairs.jsonl does not match "
                                      "runs.jsonl: run `cot-patching validate`")
    return [SelectedStep(label, idx, by_idx[idx]["tok_start"], by_idx[idx]["tok_end"]) for label, idx in chosen]


@torch.inference_mode()
def traces_activations(
    model: LoadedModel, traces: Sequence[tuple[RunRecord, Sequence[SelectedStep]]], settings: CacheSettings
) -> list[tuple[dict[str, Tensor], dict[str, Any]]]:
    """One forward over several traces at once, right-padded (causal attention never looks ahead, so padding
    after a trace cannot reach it); each trace's residuals at its selected steps' positions."""
    rows = [list(record.prompt_token_ids) + list(record.token_ids) for record, _ in traces]
    width = max(len(tokens) for tokens in rows)
    names = {hook_name(layer, hook) for layer in settings.layers for hook in settings.hooks}
    input_ids = torch.tensor([tokens + [0] * (width - len(tokens)) for tokens in rows], dtype=torch.long,
                             device=model.device)
    _, cache = model.model.run_with_cache(input_ids, names_filter=lambda name: name in names)
    out = []
    for row, ((record, steps), tokens) in enumerate(zip(traces, rows)):
        offset = len(record.prompt_token_ids)
        tensors: dict[str, Tensor] = {}
        meta: dict[str, Any] = {}
        for step in steps:
            positions = list(range(offset + step.tok_start, offset + step.tok_end))
            index = torch.tensor(positions, dtype=torch.long, device=model.device)
            for name in sorted(names):
                resid: Float[Tensor, "pos d_model"] = cache[name][row].index_select(0, index)
                tensors[f"{step.label}/{name}"] = resid.to(settings.torch_dtype).cpu().contiguous()
            meta[step.label] = {"step_idx": step.step_idx, "positions": positions,
                                "token_ids": [tokens[p] for p in positions]}
        out.append((tensors, meta))
    del cache
    return out


def cache_pairs(model: LoadedModel, pairs: Sequence[LoadedPair], settings: CacheSettings, out_dir: Path,
                model_info: dict[str, Any], strict_format: bool = False, traces_per_forward: int = 1,
                ) -> Iterator[dict[str, Any]]:
    """Cache pairs in order, `traces_per_forward` traces to a forward; each pair's index line once its file is
    written."""
    if traces_per_forward < 1:
        raise ValueError(f"traces per forward must be >= 1, got {traces_per_forward}")
    chunk = max(1, traces_per_forward // len(TRACES))
    for start in range(0, len(pairs), chunk):
        group = pairs[start: start + chunk]
        traces = [(pair.trace(trace), steps_to_cache(pair, trace, settings.steps, strict_format))
                  for pair in group for trace in TRACES]
        results: list[tuple[dict[str, Tensor], dict[str, Any]]] = []
        for first in range(0, len(traces), traces_per_forward):
            results += traces_activations(model, traces[first: first + traces_per_forward], settings)
        for number, pair in enumerate(group):
            yield write_pair(pair, results[number * len(TRACES): (number + 1) * len(TRACES)], settings, out_dir,
                             model_info)


def write_pair(pair: LoadedPair, results: Sequence[tuple[dict[str, Tensor], dict[str, Any]]],
               settings: CacheSettings, out_dir: Path, model_info: dict[str, Any]) -> dict[str, Any]:
    """Write one pair's traces' residuals (in TRACES order) atomically into its safetensors file; its index line."""
    tensors: dict[str, Tensor] = {}
    traces: dict[str, Any] = {}
    for trace, (trace_tensors, steps_meta) in zip(TRACES, results):
        tensors.update({f"{trace}/{key}": value for key, value in trace_tensors.items()})
        traces[trace] = {"attempt": pair.trace(trace).attempt, "runs_offset": pair.runs_offset(trace),
                         "steps": steps_meta}
    path = out_dir / artifacts.cache_file_name(pair.id)
    atomic_write_bytes(path, save(tensors))  # no metadata: its key order is not stable; the index has it
    return {
        "pair_id": pair.id, "file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size,
        "model": model_info.get("name"), "model_revision": model_info.get("revision"),
        "backend": model_info.get("backend"),
        "dtype": settings.to_json()["dtype"], "layers": list(settings.layers), "hooks": list(settings.hooks),
        "keys": sorted(tensors), "traces": traces,
    }


def read_index(out_dir: Path) -> list[dict[str, Any]]:
    """Every complete line of index.jsonl (a torn last line from a kill is dropped)."""
    path = Path(out_dir) / INDEX_FILE
    drop_torn_tail(path)
    if not path.exists():
        return []
    entries = read_jsonl_file(path)
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or \
                not isinstance(entry.get("traces"), dict) or not isinstance(entry.get("pair_id"), str):
            raise ArtifactError(f"{path}:{number}: not an index entry (pair_id, file and traces)")
    return entries


def index_problems(out_dir: Path, entry: dict[str, Any], verify_hashes: bool = False) -> list[str]:
    """What is wrong between one index line and its safetensors file (nothing: an empty list)."""
    path = Path(out_dir) / entry["file"]
    if not path.is_file():
        return [f"{entry['pair_id']}: file {entry['file']} is missing"]
    if path.stat().st_size != entry["bytes"]:
        return [f"{entry['pair_id']}: {entry['file']} has {path.stat().st_size} bytes, index says {entry['bytes']}"]
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = sorted(handle.keys())
    except Exception as err:  # safetensors raises its own error types for a damaged header
        return [f"{entry['pair_id']}: {entry['file']} is not readable safetensors ({err})"]
    if keys != entry["keys"]:
        return [f"{entry['pair_id']}: tensors in {entry['file']} differ from the index"]
    if verify_hashes and file_sha256(path) != entry["sha256"]:
        return [f"{entry['pair_id']}: sha256 of {entry['file']} differs from the index"]
    return []


@dataclass
class CacheReport:
    """What a cache-activations call did."""

    cached: int
    skipped: int
    repaired: list[str]


def cache_activations(
    model: LoadedModel, results_dir: str | Path, out_dir: str | Path, settings: CacheSettings,
    model_info: dict[str, Any], strict_format: bool = False, overwrite: bool = False,
    verify_hashes: bool = False, progress: bool = True, traces_per_forward: int = 1,
) -> CacheReport:
    """Cache every pair not yet cached; verify the ones that are; rewrite stale index lines."""
    pairs = load_pairs(results_dir)
    out_dir = Path(out_dir)
    owned = artifacts.owned_cache_files(out_dir, [pair.id for pair in pairs])  # refuses a foreign folder
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / CONFIG_FILE
    wanted = {"settings": settings.to_json(), "model": model_info.get("name"),
              "model_revision": model_info.get("revision"), "backend": model_info.get("backend", BRIDGE),
              "results": str(Path(results_dir).resolve())}
    if overwrite:
        for path in owned:
            path.unlink()
    if config_path.exists():
        recorded = {"backend": BRIDGE, **read_json_file(config_path, dict)}  # caches made before backends
        for key in ("settings", "model", "model_revision", "backend"):
            if recorded.get(key) != wanted[key]:
                raise ValueError(f"{out_dir} holds a cache made with a different {key}: "
                                 f"{recorded.get(key)!r}; use another --out or --overwrite")
    else:
        write_json(config_path, wanted)

    entries = read_index(out_dir)
    valid, repaired = [], []
    for entry in entries:
        problems = index_problems(out_dir, entry, verify_hashes)
        (repaired.extend(problems) if problems else valid.append(entry))
    if repaired or len(valid) != len(entries):
        atomic_write_text(out_dir / INDEX_FILE, "".join(json.dumps(e) + "\n" for e in valid))
    done = {entry["pair_id"] for entry in valid}
    todo = [pair for pair in pairs if pair.id not in done]
    bar = progress_bar(len(pairs), "pairs", "pair", progress, initial=len(pairs) - len(todo))
    cached = 0
    for entry in cache_pairs(model, todo, settings, out_dir, model_info, strict_format, traces_per_forward):
        append_fsynced(out_dir / INDEX_FILE, json.dumps(entry) + "\n")
        cached += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return CacheReport(cached=cached, skipped=len(pairs) - len(todo), repaired=repaired)


@dataclass(frozen=True)
class ActivationKey:
    """(pair id, trace, step, hook, layer): how a cached tensor is addressed."""

    pair_id: str
    trace: str
    step: str
    hook: str
    layer: int


@dataclass(frozen=True)
class CachedActivation:
    """Where one cached tensor is and what it covers; `.load()` reads just that tensor."""

    key: ActivationKey
    file: Path
    tensor_key: str
    positions: list[int]  # absolute positions in prompt + trace tokens
    token_ids: list[int]
    step_idx: int

    def load(self) -> Float[Tensor, "pos d_model"]:
        """Read the tensor from its safetensors file."""
        with safe_open(str(self.file), framework="pt") as handle:
            return handle.get_tensor(self.tensor_key)


class ActivationStore:
    """Lazy, read-only view of a cache directory: index in memory, tensors read on access."""

    def __init__(self, out_dir: str | Path) -> None:
        self.root = Path(out_dir)
        if not (self.root / INDEX_FILE).is_file():
            raise ArtifactError(f"{self.root} has no {INDEX_FILE}: not an activation cache")
        self.config = read_json_file(self.root / CONFIG_FILE, dict)
        self._entries: dict[ActivationKey, CachedActivation] = {}
        for line in read_index(self.root):
            for trace, trace_meta in line["traces"].items():
                for step, meta in trace_meta["steps"].items():
                    for hook in line["hooks"]:
                        for layer in line["layers"]:
                            key = ActivationKey(line["pair_id"], trace, step, hook, layer)
                            self._entries[key] = CachedActivation(
                                key, self.root / line["file"], f"{trace}/{step}/{hook_name(layer, hook)}",
                                meta["positions"], meta["token_ids"], meta["step_idx"],
                            )

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[ActivationKey]:
        return iter(self._entries)

    def __contains__(self, key: object) -> bool:
        return self._as_key(key) in self._entries

    def entry(self, key: ActivationKey | tuple[str, str, str, str, int]) -> CachedActivation:
        """Metadata of one cached tensor (positions, token ids, file) without reading it."""
        return self._entries[self._as_key(key)]

    def __getitem__(self, key: ActivationKey | tuple[str, str, str, str, int]) -> Float[Tensor, "pos d_model"]:
        return self.entry(key).load()

    @staticmethod
    def _as_key(key: object) -> ActivationKey:
        return key if isinstance(key, ActivationKey) else ActivationKey(*key)  # type: ignore[misc]

    def pair_ids(self) -> list[str]:
        """Cached pair ids, in index order."""
        return list(dict.fromkeys(key.pair_id for key in self._entries))


def load_activations(out_dir: str | Path) -> ActivationStore:
    """Open an activation cache; tensors keyed by (pair id, trace, step, hook, layer) load on access."""
    return ActivationStore(out_dir)
