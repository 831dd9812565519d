"""The TransformerLens class a model runs under: the 4.x `TransformerBridge` or the 3.x `HookedTransformer`."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import tempfile
import warnings
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, Callable, Iterator

import einops
import torch
from torch import Tensor

BRIDGE, HOOKED = "bridge", "hooked"
BACKENDS = (BRIDGE, HOOKED)
AUTO = "auto"
HOOKED_INSTALL = "pip install 'cot-patching[hooked]' (TransformerLens 3.9, the last release with HookedTransformer)"
BRIDGE_INSTALL = "pip install 'transformer-lens>=4.3'"
# TransformerLens 3.9 guesses the architecture from these words in a model's name or path instead of reading its
# config, so the config directory we hand it must not contain them.
NAME_SNIFFED_WORDS = ("llama", "gemma")


class BackendError(RuntimeError):
    """A backend that is unknown or not installed, or a model it cannot run."""


def transformer_lens_version() -> str | None:
    """The installed transformer-lens version, or None."""
    try:
        return importlib.metadata.version("transformer-lens")
    except importlib.metadata.PackageNotFoundError:
        return None


def available_backends() -> tuple[str, ...]:
    """The backends the installed TransformerLens provides."""
    version = transformer_lens_version()
    if version is None:
        return ()
    found = []
    if importlib.util.find_spec("transformer_lens.model_bridge") is not None:
        found.append(BRIDGE)
    if int(version.split(".")[0]) < 4 and importlib.util.find_spec("transformer_lens.HookedTransformer"):
        found.append(HOOKED)
    return tuple(found)


def resolve_backend(requested: str | None = None) -> str:
    """`bridge` or `hooked`: the requested one if installed; for None/`auto`, hooked on TransformerLens 3.x."""
    available = available_backends()
    if requested in (None, AUTO):
        if not available:
            raise BackendError(f"transformer-lens is not installed: {BRIDGE_INSTALL}, or {HOOKED_INSTALL}")
        return HOOKED if HOOKED in available else BRIDGE
    if requested not in BACKENDS:
        raise BackendError(f"unknown backend {requested!r}; choose {', '.join(BACKENDS)} or {AUTO}")
    if requested not in available:
        hint = HOOKED_INSTALL if requested == HOOKED else BRIDGE_INSTALL
        raise BackendError(
            f"backend {requested!r} needs another TransformerLens (installed: {transformer_lens_version()}): {hint}"
        )
    return requested


def bridge_from_hf(hf_model: Any, tokenizer: Any, name: str) -> Any:
    """A `TransformerBridge` over `hf_model` in compatibility mode: HookedTransformer hook names, no processing."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer)
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    hand_cache_to_attention(bridge)
    bridge.eval()
    return bridge


def hand_cache_to_attention(bridge: Any) -> int:
    """Make every attention bridge of `bridge` see the layer's KV cache under `past_key_values`; how many.

    From transformers 5.24 a decoder layer passes its cache to attention as `cache=`, while TransformerLens 4.3's
    attention bridges (which recompute attention themselves, so that hooks see scores and patterns) read only
    `past_key_values` / `layer_past`: without this every decode step attended to itself alone and generation
    ignored the prompt. `models.loading` checks cached against uncached logits at every load.
    """
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    def pass_cache_on(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
            kwargs = {**kwargs, "past_key_values": kwargs["cache"]}
        return args, kwargs

    attention = [module for module in bridge.modules() if isinstance(module, AttentionBridge)]
    for module in attention:
        module.register_forward_pre_hook(pass_cache_on, with_kwargs=True)
    return len(attention)


def hooked_from_hf(hf_model: Any, tokenizer: Any, name: str, device: torch.device, dtype: torch.dtype) -> Any:
    """A `HookedTransformer` (`from_pretrained_no_processing`) with `hf_model`'s weights, for any name or path.

    TransformerLens 3.9 only accepts names on its list; the config is read from a copy of `hf_model.config`
    instead, so hub names it does not list, local directories and GGUF files all load the same way.
    """
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer

    quantization = getattr(hf_model.config, "quantization_config", None)
    if quantization is not None and quant_method(quantization) != "gguf":
        raise BackendError(
            f"the hooked backend cannot run a {quant_method(quantization)}-quantized model "
            "(HookedTransformer reads weights directly); load it unquantized or use --backend bridge"
        )
    with _config_dir(hf_model) as config_dir, _without_quantization_config(hf_model):
        official_name = loading.get_official_model_name
        loading.get_official_model_name = lambda model_name: model_name if Path(model_name).exists() \
            else official_name(model_name)
        try:
            # Silence the chosen class's deprecation notice and its "Loaded pretrained model <temp dir>" print.
            with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore", DeprecationWarning)
                model = HookedTransformer.from_pretrained_no_processing(
                    config_dir, hf_model=hf_model, tokenizer=tokenizer, device=str(device), dtype=dtype,
                    default_prepend_bos=False,  # our prompts come from the chat template, which writes BOS itself
                )
        finally:
            loading.get_official_model_name = official_name
    model.cfg.model_name = name.rstrip("/").split("/")[-1]
    model.eval()
    lay_out_weights_as_read(model)
    return model


def quant_method(quantization: Any) -> str:
    """The quantization method a `quantization_config` names (`gguf`, `bitsandbytes`, ...)."""
    method = quantization.get("quant_method") if isinstance(quantization, dict) else \
        getattr(quantization, "quant_method", "")
    return str(getattr(method, "value", method))


@contextmanager
def _config_dir(hf_model: Any) -> Iterator[str]:
    """A temporary directory holding `hf_model`'s config (with `architectures`) for TransformerLens to read."""
    config = hf_model.config.__class__.from_dict(hf_model.config.to_dict())
    config.architectures = config.architectures or [type(hf_model).__name__]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with tempfile.TemporaryDirectory(prefix="cot-patching-config-") as folder:
        if any(word in folder.lower() for word in NAME_SNIFFED_WORDS):
            raise BackendError(f"temporary directory {folder} contains one of {NAME_SNIFFED_WORDS}, which "
                               "TransformerLens 3.9 reads as a model name; set TMPDIR to another folder")
        config.save_pretrained(folder)
        yield folder


@contextmanager
def _without_quantization_config(hf_model: Any) -> Iterator[None]:
    """Hide a GGUF `quantization_config` (its weights are already dequantized) from TransformerLens' check."""
    quantization = getattr(hf_model.config, "quantization_config", None)
    if quantization is None:
        yield
        return
    del hf_model.config.quantization_config
    try:
        yield
    finally:
        hf_model.config.quantization_config = quantization


# How each HookedTransformer 3.9 component rearranges a weight before its F.linear, as (reading, unreading):
# `reading(w)` is what the forward builds, `unreading(t, w)` gives back a tensor of w's shape whose storage is `t`. Storing weights so that `reading(w)` is already contiguous (Hugging Face's layout) turns the
# per-forward copy of every weight into a view; the values the forward sees are the same.
def _rearranger(pattern: str) -> Callable[[Tensor], Tensor]:
    return lambda w: einops.rearrange(w, pattern)


ATTENTION_QKV = ("W_Q", "_W_K", "_W_V", "W_K", "W_V")
LAYOUTS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    "linear_T": (lambda w: w.T, lambda t, w: t.T),
    "qkv": (_rearranger("h d_model d_head -> (h d_head) d_model"),
            lambda t, w: t.view(w.shape[0], w.shape[2], w.shape[1]).permute(0, 2, 1)),
    "out": (_rearranger("h d_head d_model -> d_model (h d_head)"),
            lambda t, w: t.view(w.shape[2], w.shape[0], w.shape[1]).permute(1, 2, 0)),
}


def _weights_to_lay_out(model: Any) -> Iterator[tuple[Tensor, str]]:
    from transformer_lens.components import Unembed
    from transformer_lens.components.abstract_attention import AbstractAttention
    from transformer_lens.components.mlps.gated_mlp import GatedMLP

    for module in model.modules():
        if isinstance(module, GatedMLP):
            yield from ((getattr(module, name), "linear_T") for name in ("W_gate", "W_in", "W_out"))
        elif isinstance(module, Unembed):
            yield module.W_U, "linear_T"
        elif isinstance(module, AbstractAttention) and not module.cfg.load_in_4bit:
            for name in ATTENTION_QKV:
                parameter = module._parameters.get(name)
                if parameter is not None:
                    yield parameter, "qkv"
            yield module.W_O, "out"


@torch.no_grad()
def lay_out_weights_as_read(model: Any) -> None:
    """Store GatedMLP, Unembed and attention weights in the layout their forward reads (values unchanged)."""
    for parameter, layout in _weights_to_lay_out(model):
        reading, unreading = LAYOUTS[layout]
        stored = reading(parameter.data).contiguous()
        parameter.data = unreading(stored, parameter.data)
