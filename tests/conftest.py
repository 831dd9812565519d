"""Shared fixtures: real tokenizers of each family, a tiny random model, the embedded model."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub; fail fast instead of retrying
# Every test process (and each process a test starts) shares one GGUF cache: the embedded model is converted once per
# machine, not once per load (see cot_patching/models/gguf_cache.py; tests/integration/test_gguf_cache.py tests it).
os.environ.setdefault("COT_PATCHING_GGUF_CACHE", str(Path(tempfile.gettempdir()) / "cot-patching-tests" / "gguf"))

from cot_patching.models.loading import (
    EMBEDDED,
    LoadedModel,
    from_hf_model,
    load_model,
    load_tokenizer,
    resolve_model,
)

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                  "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"test tokenizer package {name} is not installed (see README: test command)")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Any:
    """SmolLM2's byte-level BPE tokenizer, from the embedded GGUF."""
    return load_tokenizer(resolve_model(EMBEDDED))


@pytest.fixture(scope="session")
def mistral_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Mistral v0.3's SentencePiece tokenizer (byte fallback), shipped by mistral-common."""
    from transformers import LlamaTokenizer

    folder = tmp_path_factory.mktemp("mistral")
    model = _package_dir("mistral_common") / "data" / "mistral_instruct_tokenizer_240216.model.v2"
    shutil.copy(model, folder / "tokenizer.model")
    return LlamaTokenizer.from_pretrained(folder)


@pytest.fixture(scope="session")
def llama3_tokenizer() -> Any:
    """Llama-3's tiktoken BPE, shipped by llama-models, converted to a fast tokenizer."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = _package_dir("llama_models") / "llama3" / "tokenizer.model"
    converted = TikTokenConverter(vocab_file=str(path), pattern=LLAMA3_PATTERN).converted()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=converted)
    tokenizer.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIAL})
    tokenizer.eos_token = "<|eot_id|>"
    tokenizer.bos_token = "<|begin_of_text|>"
    return tokenizer


@pytest.fixture(scope="session")
def qwen_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Qwen2.5's byte-level BPE tokenizer (that of the committed Qwen2.5-Coder runs), from tests/data."""
    import lzma

    from transformers import AutoTokenizer

    source = Path(__file__).parent / "data" / "qwen2.5-tokenizer"
    folder = tmp_path_factory.mktemp("qwen")
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(source / name, folder / name)
    (folder / "tokenizer.json").write_bytes(lzma.decompress((source / "tokenizer.json.xz").read_bytes()))
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="session", params=["smollm2", "mistral", "llama3", "qwen"])
def any_tokenizer(request: pytest.FixtureRequest) -> Any:
    """Each real tokenizer family in turn."""
    return request.getfixturevalue(f"{request.param}_tokenizer")


def tiny_hf_model(tokenizer: Any, seed: int = 0) -> Any:
    """A 2-layer, d_model 64 random-weight Hugging Face Llama sized for `tokenizer`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    return LlamaForCausalLM(config).eval()


def tiny_model(tokenizer: Any, seed: int = 0) -> LoadedModel:
    """The tiny random Llama with a real tokenizer, as a TransformerLens bridge."""
    return from_hf_model(tiny_hf_model(tokenizer, seed), tokenizer, name="tiny-random-llama")


@pytest.fixture(scope="session")
def tiny_dir(smollm2_tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny model saved as a local Hugging Face directory (config, weights, tokenizer)."""
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_hf_model(smollm2_tokenizer).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny(smollm2_tokenizer: Any) -> LoadedModel:
    """The tiny random model with SmolLM2's tokenizer and chat template."""
    return tiny_model(smollm2_tokenizer)


@pytest.fixture(scope="session")
def embedded() -> LoadedModel:
    """The embedded SmolLM2-135M-Instruct (GGUF Q4_1, dequantized, fp32, CPU)."""
    return load_model(EMBEDDED, device="cpu")


# Which tests build a TransformerLens model: those that ask for a model fixture, those in a module that builds one
# itself, and those that start a process with a model to load (MODEL_PROCESSES). CI's hooked line (TransformerLens
# 3.9) runs only these: the rest never touches TransformerLens, so the bridge line covers it. `_builds_only_if_marked`
# keeps the rule honest: an unmarked test that builds a model, or starts a process that imports TransformerLens, fails.
MODEL_FIXTURES = {"tiny", "tiny_dir", "embedded"}
MODEL_BUILDERS = ("tiny_model(", "tiny_hf_model(", "load_model(", "from_hf_model(")
MODEL_PROCESSES = ('"--model"', "slurm-check.sh")  # a process started with a model to load


@functools.cache
def _builds_models(module_path: Path) -> bool:
    text = module_path.read_text("utf-8") if module_path.suffix == ".py" else ""
    starts_model_processes = "subprocess" in text and any(name in text for name in MODEL_PROCESSES)
    return starts_model_processes or any(name in text for name in MODEL_BUILDERS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that builds a TransformerLens model `transformer_lens` and `slow` (the quick loop skips it)."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) or _builds_models(Path(str(item.path))):
            item.add_marker(pytest.mark.transformer_lens)
        if item.get_closest_marker("transformer_lens") is not None:  # by this rule or by its own decorator
            item.add_marker(pytest.mark.slow)


def _model_constructors() -> list[tuple[Any, str]]:
    constructors = []
    try:
        from transformer_lens.model_bridge import TransformerBridge

        constructors.append((TransformerBridge, "boot_transformers"))
    except ImportError:
        pass
    try:
        from transformer_lens import HookedTransformer

        constructors.append((HookedTransformer, "from_pretrained_no_processing"))
    except ImportError:
        pass
    return constructors


@pytest.fixture(autouse=True)
def _builds_only_if_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Fail a test not marked `transformer_lens` that builds a TransformerLens model (the hooked line would skip it)."""
    if request.node.get_closest_marker("transformer_lens") is not None:
        yield
        return
    guards = str(Path(__file__).parent / "guards")  # its sitecustomize refuses TransformerLens in started processes
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [guards, os.environ.get("PYTHONPATH")])))
    built: list[str] = []
    for cls, name in _model_constructors():
        original = getattr(cls, name)

        def counted(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            built.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, name, staticmethod(counted))  # `original` is already bound to its class
    yield
    if built:
        pytest.fail(f"this test built a TransformerLens model ({built[0]}) but is not marked transformer_lens: mark "
                    "it @pytest.mark.transformer_lens, or add its fixture to MODEL_FIXTURES in tests/conftest.py")
