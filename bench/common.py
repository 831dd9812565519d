"""What the benchmarks share: the random-weight Llama-3.1-8B architecture with the real Llama-3 tokenizer, and timing.

Benchmarks are modules of the `bench` package: run them from the repository root as `python -m bench.NAME`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from cot_patching.models.loading import LoadedModel, from_hf_model


def llama31_8b_config() -> Any:
    """Llama-3.1-8B-Instruct's architecture, written out (the GPU machine has no hub access)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False, hidden_act="silu",
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
    )


def llama3_tokenizer(path: Path) -> Any:
    """Llama-3's tiktoken file as a fast tokenizer (only used to encode the prompt)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=TikTokenConverter(str(path), pattern=pattern).converted())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|begin_of_text|>", "<|eot_id|>"]})
    tokenizer.bos_token, tokenizer.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    from transformers import AutoTokenizer

    folder = tempfile.mkdtemp(prefix="llama3-tokenizer-")
    tokenizer.save_pretrained(folder)  # TransformerLens re-loads tokenizers by name_or_path
    return AutoTokenizer.from_pretrained(folder)


def random_llama31_8b_hf() -> Any:
    """A plain Hugging Face Llama with random bf16 weights of Llama-3.1-8B's shape on the GPU (seed 0)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):
        hf = LlamaForCausalLM._from_config(llama31_8b_config(), dtype=torch.bfloat16)
    for parameter in hf.parameters():
        parameter.data.normal_(0.0, 0.02)
    return hf.eval()


def random_llama31_8b(tokenizer_path: Path) -> LoadedModel:
    """Random bf16 weights of Llama-3.1-8B's shape on the GPU, wrapped like any mined model."""
    return from_hf_model(random_llama31_8b_hf(), llama3_tokenizer(tokenizer_path),
                         name="random-Llama-3.1-8B-architecture")


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_call(fn: Callable[[], int]) -> tuple[float, int]:
    """Seconds and new tokens of one call."""
    synchronize()
    start = time.perf_counter()
    n_tokens = fn()
    synchronize()
    return time.perf_counter() - start, n_tokens
