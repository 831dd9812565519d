"""A plain Hugging Face twin of a bridged model: the same weight tensors, Hugging Face's own modules.

TransformerLens 4 wraps the Hugging Face model's modules in place (`TransformerBridge`); its attention is
reimplemented step by step so that hooks see scores and patterns, which at decode time expands the grouped K/V of the
whole KV cache for every layer and step. Decoding needs no hooks, so the batched decoder can run a twin built from
the model's class and config whose parameters and buffers are the bridged model's own tensors (no copy, no extra
memory): Hugging Face's attention (`sdpa`), exactly the modules plain `generate` runs. Activations and patching keep
using the bridge; a record names the modules it was decoded with, and its replay uses the same.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

WRAPPER = "._original_component"


def plain_twin(bridged: Any, attn_implementation: str = "sdpa") -> Any:
    """The bridged Hugging Face model's class and config, built without TransformerLens wrappers, holding the
    bridged model's own parameter and buffer tensors; eval mode."""
    config = copy.deepcopy(bridged.config)
    with torch.device("meta"):
        twin = type(bridged)._from_config(config, attn_implementation=attn_implementation)
    source: dict[str, torch.Tensor] = {}
    for name, tensor in [*bridged.named_parameters(remove_duplicate=False),
                         *bridged.named_buffers(remove_duplicate=False)]:
        source.setdefault(name.replace(WRAPPER, ""), tensor)
    missing = []
    for name, _ in [*twin.named_parameters(remove_duplicate=False), *twin.named_buffers(remove_duplicate=False)]:
        module_name, _, leaf = name.rpartition(".")
        module = twin.get_submodule(module_name)
        tensor = source.get(name)
        if tensor is None:
            missing.append(name)
        elif leaf in module._parameters:
            module._parameters[leaf] = tensor
        else:
            module._buffers[leaf] = tensor
    if missing:
        raise ValueError(f"the bridged model has no tensor for {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}: cannot build its plain twin")
    twin.generation_config = bridged.generation_config
    return twin.eval()
