"""On CUDA: each attempt decoded twice (fresh generator each time) must give identical token ids, on both the
CUDA-graph path (what mining uses on GPU) and the eager path; also how often the two paths agree."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from bench.common import random_llama31_8b
from cot_patching.decoding.sampling import DecodeConfig, sample

graphed = random_llama31_8b(Path(sys.argv[1]))
eager = dataclasses.replace(graphed, cuda_graphs=False, _graphed={})
uncompiled = dataclasses.replace(graphed, compile_step=False, _graphed={})
failures = 0
for prompt_len in (150, 300):
    prompt = list(range(1000, 1000 + prompt_len))
    for temperature in (0.0, 0.7, 1.0):
        config = DecodeConfig(temperature, 0.95, 128)
        runs = {name: [sample(m, prompt, config, seed=1234).token_ids for _ in range(2)]
                for name, m in (("cuda_graph_compiled", graphed), ("cuda_graph", uncompiled), ("eager", eager))}
        same = {name: a == b for name, (a, b) in runs.items()}
        agree = next((i for i, (x, y) in enumerate(zip(runs["cuda_graph_compiled"][0], runs["eager"][0])) if x != y), 128)
        print(f"prompt {prompt_len} T={temperature}: replay identical {same}; compiled graph and eager agree on the first "
              f"{agree}/128 tokens")
        failures += not all(same.values())
print(torch.cuda.get_device_name(0), "failures:", failures)
sys.exit(1 if failures else 0)
