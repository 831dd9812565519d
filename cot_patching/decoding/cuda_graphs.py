"""Batch-1 decode steps replayed from one captured CUDA graph over a static KV cache (CUDA only).

At batch size 1 an 8B model's step is dominated by launching hundreds of small kernels from Python; replaying a
captured graph removes that. The graph is captured once per model and cache length and reused across attempts,
so every attempt on the same machine runs exactly the same kernels: replay stays bit-exact.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from cot_patching.decoding.hf_cache import cache_keyword


class GraphedDecoder:
    """Prefill eagerly into a static cache, then decode one token per `graph.replay()`."""

    def __init__(self, hf_model: Any, max_cache_len: int, compile_step: bool = True) -> None:
        from transformers import StaticCache

        self.hf_model = hf_model
        # torch.compile fuses the one-token step's small kernels (Inductor, no autotuning, so the same kernels
        # come out on every run); the graph then captures the compiled kernels. The prompt runs uncompiled.
        self.step_model = torch.compile(hf_model, dynamic=False) if compile_step else hf_model
        self.max_cache_len = max_cache_len
        device = next(hf_model.parameters()).device
        self.cache = StaticCache(config=hf_model.config, max_cache_len=max_cache_len)
        self.cache_keyword = cache_keyword(hf_model)
        self.input_ids = torch.zeros((1, 1), dtype=torch.long, device=device)
        self.position = torch.zeros((1,), dtype=torch.long, device=device)
        self.logits: Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.prompt_ids: list[int] = []
        # The additive causal mask is built here from device tensors: Hugging Face's own mask builder copies a
        # CPU scalar, which a graph capture forbids; a prepared 4D mask is used as it is.
        dtype = next(hf_model.parameters()).dtype
        self.key_positions = torch.arange(max_cache_len, device=device)
        self.visible = torch.zeros((), dtype=dtype, device=device)
        self.hidden = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=device)

    def _forward(self, input_ids: Tensor, cache_position: Tensor) -> Tensor:
        allowed = self.key_positions[None, :] <= cache_position[:, None]
        mask = torch.where(allowed, self.visible, self.hidden)[None, None]
        model = self.step_model if input_ids.shape[1] == 1 else self.hf_model
        out = model(input_ids=input_ids, attention_mask=mask, **{self.cache_keyword: self.cache},
                    cache_position=cache_position, use_cache=True)
        return out.logits

    def prefill(self, prompt_ids: Sequence[int]) -> Float[Tensor, "vocab"]:
        """Reset the cache and run the prompt; the next-token logits."""
        if len(prompt_ids) >= self.max_cache_len:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit a cache of {self.max_cache_len}")
        self.cache.reset()
        self.prompt_ids = list(prompt_ids)
        ids = torch.tensor([self.prompt_ids], dtype=torch.long, device=self.input_ids.device)
        positions = torch.arange(len(prompt_ids), device=self.input_ids.device)
        return self._forward(ids, positions)[0, -1]

    def step(self, token: Tensor, position: int) -> Float[Tensor, "vocab"]:
        """Logits after feeding `token` at `position` (the cache already holds positions < `position`)."""
        if position >= self.max_cache_len:
            raise ValueError(f"position {position} is past the static cache of {self.max_cache_len}")
        self.input_ids.copy_(token.view(1, 1))
        self.position.fill_(position)
        if self.graph is None:
            if position != len(self.prompt_ids):
                raise RuntimeError("the decode graph must be captured at the first step after a prefill")
            self._capture()
            # The warm-up forwards also ran the cache's own bookkeeping (Hugging Face's StaticCache advances a
            # write counter on every update), so the cache is rebuilt from the prompt: the first attempt then
            # starts from exactly the state every later attempt starts from.
            self.prefill(self.prompt_ids)
        assert self.graph is not None and self.logits is not None
        self.graph.replay()
        return self.logits[0, -1]

    def _capture(self) -> None:
        self.graph, self.logits = capture_graph(lambda: self._forward(self.input_ids, self.position))


def capture_graph(forward: Callable[[], Tensor]) -> tuple[torch.cuda.CUDAGraph, Tensor]:
    """Warm `forward` up twice on a side stream, then capture one call of it: the graph and its output buffer.

    The warm-ups rewrite the same cache positions with the same values; callers rebuild their cache state after.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            forward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = forward()
    return graph, output
