"""Seeded, replayable temperature + top-p decoding with the model's own forward and KV cache (SPEC §4)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor


def attempt_seed(problem_id: str, attempt_index: int) -> int:
    """The SPEC seed: first 8 bytes of sha256("{problem_id}:{attempt_index}"), as a 63-bit int."""
    digest = hashlib.sha256(f"{problem_id}:{attempt_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


# The smallest non-zero temperature: logits / T stays finite (|logit| < 3e35 in fp32, bf16 and fp16 upcast) and
# softmax a distribution; below it a run would die mid-way on every resume. T = 0 is greedy.
MIN_TEMPERATURE = 1e-3


def check_temperature(value: object, what: str = "temperature") -> float:
    """`value` as a temperature: a real number, 0 or in [MIN_TEMPERATURE, inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or 0 < value < MIN_TEMPERATURE:
        raise ValueError(f"{what} must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE}, got {value!r}")
    return float(value)


def parse_temperature_seq(text: str) -> tuple[float, ...]:
    """Parse `0.0,0.9,1.0` into temperatures; reject empty, negative or non-finite values."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--temperature-seq {text!r} is not a comma-separated list of numbers") from None
    if not values:
        raise ValueError("--temperature-seq is empty")
    for value in values:
        check_temperature(value, f"--temperature-seq {text!r}: each temperature")
    return values


def temperature_schedule(temperature_seq: Sequence[float], max_tries: int) -> list[float]:
    """T=0 once, each non-zero T twice, in order, truncated to `max_tries`."""
    if max_tries < 1:
        raise ValueError("max_tries must be at least 1")
    schedule: list[float] = []
    for temperature in temperature_seq:
        schedule.extend([temperature] if temperature == 0 else [temperature, temperature])
    return schedule[:max_tries]


MAX_NEW_TOKENS_LIMIT = 131_072


@dataclass(frozen=True)
class DecodeConfig:
    """How one attempt is decoded."""

    temperature: float
    top_p: float
    max_new_tokens: int

    def __post_init__(self) -> None:
        check_temperature(self.temperature)
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or \
                not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(f"max_new_tokens must be an integer in 1..{MAX_NEW_TOKENS_LIMIT} (the longest context "
                             f"of the models we run), got {self.max_new_tokens!r}")


@dataclass(frozen=True)
class Generation:
    """What one attempt produced: the new token ids, why it stopped, each chosen token's log-prob."""

    token_ids: list[int]
    finish_reason: str  # "stop" (an end-of-turn id, included in token_ids) or "length"
    token_logprobs: list[float]  # log p(token) under the model's untempered distribution


def choose_next_token(
    logits: Float[Tensor, "vocab"], temperature: float, top_p: float, generator: torch.Generator
) -> Int[Tensor, ""]:
    """Argmax at T=0; else one draw from the top-p nucleus of softmax(logits / T)."""
    if temperature == 0:
        return torch.argmax(logits)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, sorted_ids = torch.sort(probs, descending=True, stable=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    nucleus = torch.where(mass_before < top_p, sorted_probs, torch.zeros_like(sorted_probs))
    choice = torch.multinomial(nucleus, num_samples=1, generator=generator)
    return sorted_ids[choice[0]]


CACHE_BUCKET = 256
STOP_CHECK_INTERVAL = 16


@torch.inference_mode()
def sample(
    model: Any,
    prompt_ids: Sequence[int],
    config: DecodeConfig,
    seed: int,
    stop_check_interval: int | None = None,
) -> Generation:
    """Decode one attempt from `prompt_ids` with a fresh generator seeded with `seed`."""
    device = model.device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    stop_ids = model.stop_token_ids
    decoder = decoder_for(model, len(prompt_ids), config.max_new_tokens)
    logits = decoder.prefill(prompt_ids)
    # On CUDA, tokens stay on the device and are read back every few steps, so the host never waits on each
    # step; steps decoded past an end-of-turn token are discarded and do not change what was sampled before it.
    check_every = stop_check_interval or (STOP_CHECK_INTERVAL if device.type == "cuda" else 1)
    new_tokens = torch.empty(config.max_new_tokens, dtype=torch.long, device=device)
    new_logprobs = torch.empty(config.max_new_tokens, dtype=torch.float32, device=device)
    token_ids: list[int] = []
    for index in range(config.max_new_tokens):
        token = choose_next_token(logits, config.temperature, config.top_p, generator)
        new_tokens[index] = token
        new_logprobs[index] = logits[token].float() - torch.logsumexp(logits.float(), dim=-1)
        last = index + 1 == config.max_new_tokens
        if last or (index + 1) % check_every == 0:
            checked = len(token_ids)
            token_ids += new_tokens[checked: index + 1].tolist()
            stop_at = next((i for i in range(checked, len(token_ids)) if token_ids[i] in stop_ids), None)
            if stop_at is not None:
                del token_ids[stop_at + 1:]
                return Generation(token_ids, "stop", new_logprobs[: stop_at + 1].tolist())
        if not last:
            logits = decoder.step(token, len(prompt_ids) + index)
    return Generation(token_ids, "length", new_logprobs.tolist())


@runtime_checkable
class Decoder(Protocol):
    """How one attempt is decoded: the prompt's next-token logits, then the logits after each fed token.

    `EagerDecoder` runs the model's own forward and KV cache (any backend, any device);
    `cuda_graphs.GraphedDecoder` replays a captured CUDA graph over a static cache. `batched.BatchedDecoder` has
    the same two methods over N slots at once."""

    def prefill(self, prompt_ids: Sequence[int]) -> Float[Tensor, "vocab"]: ...

    def step(self, token: Int[Tensor, ""], position: int) -> Float[Tensor, "vocab"]: ...


class EagerDecoder:
    """The model's own forward with its KV cache (`LoadedModel.step`), one attempt at a time."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.past: Any = None

    def prefill(self, prompt_ids: Sequence[int]) -> Float[Tensor, "vocab"]:
        """Run the prompt from an empty cache; the next-token logits."""
        input_ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.model.device)
        logits, self.past = self.model.step(input_ids, None)
        return logits

    def step(self, token: Int[Tensor, ""], position: int) -> Float[Tensor, "vocab"]:
        """Logits after feeding `token` (at `position`, which the cache already implies)."""
        logits, self.past = self.model.step(token.view(1, 1), self.past)
        return logits


def decoder_for(model: Any, prompt_len: int, max_new_tokens: int) -> Decoder:
    """The decoder of the model's decode path for an attempt of this length: a CUDA graph over a static cache
    sized in `CACHE_BUCKET`s, else the eager forward."""
    if getattr(model, "decode_path", "eager").startswith("cuda_graph"):
        return model.graphed_decoder(-(-(prompt_len + max_new_tokens) // CACHE_BUCKET) * CACHE_BUCKET)
    return EagerDecoder(model)
