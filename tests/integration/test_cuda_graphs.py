"""The CUDA-graph decoder against plain Hugging Face forwards (runs only where CUDA is available)."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch

from cot_patching.decoding.cuda_graphs import GraphedDecoder
from cot_patching.decoding.sampling import DecodeConfig, sample
from cot_patching.models.loading import LoadedModel, ModelInfo

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")]

PROMPT = list(range(100, 140))


def tiny_qwen2() -> Any:
    """A 2-layer, d_model 64 random-weight Qwen2 on the GPU, fp32."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to("cuda").eval()


def wrapped(hf_model: Any, compile_step: bool) -> LoadedModel:
    """The HF model as the sampler sees a loaded model (only `original_model` is used on the graph path)."""
    info = ModelInfo(name="tiny-qwen2", source="random", path=None, revision=None, dtype="float32",
                     device="cuda", backend="bridge", tokenizer_sha256="", n_layers=2, d_model=64)
    return LoadedModel(model=types.SimpleNamespace(original_model=hf_model), tokenizer=None, info=info,
                       stop_token_ids=frozenset(), compile_step=compile_step)


@pytest.mark.parametrize("compile_step", [False, True])
@torch.inference_mode()
def test_graph_steps_match_full_forwards_from_the_first_step(compile_step: bool) -> None:
    hf_model = tiny_qwen2()
    decoder = GraphedDecoder(hf_model, max_cache_len=256, compile_step=compile_step)
    for attempt in range(2):  # the first attempt captures the graph, the second replays it
        ids = PROMPT + [7 + attempt]
        decoder.prefill(PROMPT)
        for extra in range(4):
            ids = ids + [11 * extra + attempt] if extra else ids
            stepped = decoder.step(torch.tensor(ids[-1], device="cuda"), len(ids) - 1)
            full = hf_model(torch.tensor([ids], device="cuda")).logits[0, -1]
            assert torch.allclose(stepped, full, atol=1e-4), (attempt, extra, float((stepped - full).abs().max()))


@pytest.mark.parametrize("compile_step", [False, True])
def test_first_attempt_of_a_process_replays_like_later_ones(compile_step: bool) -> None:
    model = wrapped(tiny_qwen2(), compile_step)
    config = DecodeConfig(temperature=1.0, top_p=0.95, max_new_tokens=32)
    decodes = [sample(model, PROMPT, config, seed=1234).token_ids for _ in range(3)]
    assert decodes[0] == decodes[1] == decodes[2]
