from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest
import torch

from cot_patching.decoding.sampling import (
    DecodeConfig,
    attempt_seed,
    choose_next_token,
    parse_temperature_seq,
    sample,
    temperature_schedule,
)


def test_seed_formula():
    expected = int.from_bytes(hashlib.sha256(b"gsm8k-test-0001:3").digest()[:8], "big") & (2**63 - 1)
    assert attempt_seed("gsm8k-test-0001", 3) == expected
    assert attempt_seed("a", 0) != attempt_seed("a", 1)


def test_schedule_expansion_and_truncation():
    seq = parse_temperature_seq("0.0,0.9,1.0,0.7,0.5")
    assert temperature_schedule(seq, 8) == [0.0, 0.9, 0.9, 1.0, 1.0, 0.7, 0.7, 0.5]
    assert temperature_schedule(seq, 20) == [0.0, 0.9, 0.9, 1.0, 1.0, 0.7, 0.7, 0.5, 0.5]
    assert temperature_schedule(seq, 2) == [0.0, 0.9]


@pytest.mark.parametrize("bad", ["", "a,b", "0.5,-1", "nan", "inf"])
def test_bad_temperature_seq(bad):
    with pytest.raises(ValueError):
        parse_temperature_seq(bad)


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"temperature": 1, "top_p": 0},
                                    {"temperature": 1, "top_p": 1.5}, {"temperature": 1, "max_new_tokens": 0}])
def test_decode_config_validation(kwargs):
    with pytest.raises(ValueError):
        DecodeConfig(**{"temperature": 1, "top_p": 0.95, "max_new_tokens": 8, **kwargs})


def test_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, 2.0])
    assert int(choose_next_token(logits, 0.0, 0.95, torch.Generator().manual_seed(0))) == 1


def test_top_p_nucleus_is_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    generator = torch.Generator().manual_seed(0)
    draws = [int(choose_next_token(logits, 1.0, 0.8, generator)) for _ in range(4000)]
    assert set(draws) == {0, 1}
    assert abs(draws.count(0) / len(draws) - 0.5 / 0.8) < 0.03
    draws = [int(choose_next_token(logits, 1.0, 0.81, generator)) for _ in range(2000)]
    assert set(draws) == {0, 1, 2}


def test_top_token_always_kept():
    logits = torch.tensor([5.0, 0.0, 0.0])
    generator = torch.Generator().manual_seed(0)
    assert {int(choose_next_token(logits, 1.0, 1e-6, generator)) for _ in range(50)} == {0}


def test_temperature_sharpens():
    logits = torch.tensor([1.0, 0.0])
    generator = torch.Generator().manual_seed(0)
    cold = sum(int(choose_next_token(logits, 0.1, 1.0, generator)) == 0 for _ in range(500))
    hot = sum(int(choose_next_token(logits, 5.0, 1.0, generator)) == 0 for _ in range(500))
    assert cold > 490 and hot < 350


def test_same_seed_same_tokens_different_seed_differs(tiny):
    config = DecodeConfig(1.0, 0.95, 24)
    first = sample(tiny, [1, 2, 3], config, seed=7)
    assert sample(tiny, [1, 2, 3], config, seed=7) == first
    assert sample(tiny, [1, 2, 3], config, seed=8).token_ids != first.token_ids


def test_kv_cache_decoding_equals_full_recompute(tiny):
    prompt = [1, 4093, 198, 1780, 314]
    generation = sample(tiny, prompt, DecodeConfig(0.0, 0.95, 12), seed=0)
    ids = list(prompt)
    with torch.inference_mode():
        for expected, logprob in zip(generation.token_ids, generation.token_logprobs):
            logits = tiny.logits(torch.tensor([ids]))[0, -1]
            assert int(logits.argmax()) == expected
            assert abs(float(torch.log_softmax(logits, -1)[expected]) - logprob) < 1e-4
            ids.append(expected)


@dataclass
class FixedLogits:
    """A stand-in model whose next token is always `token` (to test the stop rule of the loop)."""

    token: int
    stop_token_ids: frozenset[int]
    device: torch.device = torch.device("cpu")
    vocab: int = 10

    def step(self, input_ids, past):
        logits = torch.zeros(self.vocab)
        logits[self.token] = 10.0
        return logits, past


def test_stops_at_end_of_turn_and_keeps_it():
    generation = sample(FixedLogits(token=3, stop_token_ids=frozenset({3})), [1], DecodeConfig(0.0, 0.95, 256), 0)
    assert generation.token_ids == [3] and generation.finish_reason == "stop"


def test_stops_at_max_new_tokens():
    generation = sample(FixedLogits(token=4, stop_token_ids=frozenset({3})), [1], DecodeConfig(0.0, 0.95, 5), 0)
    assert generation.token_ids == [4] * 5 and generation.finish_reason == "length"


@dataclass
class ScriptedLogits:
    """A stand-in model that emits `tokens` in order (greedy), whatever it is fed."""

    tokens: list[int]
    stop_token_ids: frozenset[int]
    device: torch.device = torch.device("cpu")
    calls: int = 0

    def step(self, input_ids, past):
        logits = torch.zeros(10)
        logits[self.tokens[min(self.calls, len(self.tokens) - 1)]] = 10.0
        self.calls += 1
        return logits, past


@pytest.mark.parametrize("interval", [1, 2, 4, 16])
def test_deferred_stop_check_gives_the_same_generation(interval):
    model = ScriptedLogits([5, 6, 7, 3, 8, 9, 9, 9, 9], stop_token_ids=frozenset({3}))
    generation = sample(model, [1], DecodeConfig(0.0, 0.95, 9), 0, stop_check_interval=interval)
    assert generation.token_ids == [5, 6, 7, 3] and generation.finish_reason == "stop"
    assert len(generation.token_logprobs) == 4
    model = ScriptedLogits([5, 6, 7, 4, 8], stop_token_ids=frozenset({3}))
    generation = sample(model, [1], DecodeConfig(0.0, 0.95, 5), 0, stop_check_interval=interval)
    assert generation.token_ids == [5, 6, 7, 4, 8] and generation.finish_reason == "length"


def test_deferred_stop_check_on_a_real_model(tiny):
    config = DecodeConfig(1.0, 0.95, 40)
    assert sample(tiny, [1, 2, 3], config, 11, stop_check_interval=7) == sample(tiny, [1, 2, 3], config, 11)


def test_the_decoders_share_one_interface(tiny):
    from cot_patching.decoding.cuda_graphs import GraphedDecoder
    from cot_patching.decoding.sampling import Decoder, EagerDecoder, decoder_for

    decoder = decoder_for(tiny, 10, 8)
    assert isinstance(decoder, EagerDecoder) and isinstance(decoder, Decoder)
    assert all(callable(getattr(GraphedDecoder, name)) for name in ("prefill", "step"))
    prompt = list(range(100, 110))
    with torch.inference_mode():
        first = decoder.prefill(prompt)
        full = tiny.logits(torch.tensor([prompt + [7]]))[0]
        assert torch.allclose(first, full[-2], atol=1e-5)
        assert torch.allclose(decoder.step(torch.tensor(7), len(prompt)), full[-1], atol=1e-5)
