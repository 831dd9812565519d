"""On CUDA: the same attempt decoded twice (fresh generator each time) must give identical token ids."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_speed import random_llama31_8b  # noqa: E402

from cot_patching.sampling import DecodeConfig, sample  # noqa: E402

model = random_llama31_8b(Path(sys.argv[1]))
prompt = list(range(1000, 1150))
for temperature in (0.0, 0.7, 1.0):
    config = DecodeConfig(temperature, 0.95, 128)
    first = sample(model, prompt, config, seed=1234)
    second = sample(model, prompt, config, seed=1234)
    print(f"T={temperature}: {len(first.token_ids)} tokens, replay identical: {first.token_ids == second.token_ids}")
    assert first.token_ids == second.token_ids
print(torch.cuda.get_device_name(0))
