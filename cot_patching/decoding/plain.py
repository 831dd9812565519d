"""A plain Hugging Face twin of a bridged model: the same weight tensors, Hugging Face's own modules.

TransformerLens 4 wraps the Hugging Face model's modules in place (`TransformerBridge`); its attention is
reimplemented step by step so that hooks see scores and patterns, which at decode time expands the grouped K/V of the
whole KV cache for every layer and step. Decoding needs no hooks, so the batched decoder can run a twin built from
the model's class and config whose parameters and buffers are the bridged model's own tensors (no copy, no extra
memory): Hugging Face's attention (`sdpa`), exactly the modules plain `generate` runs. Activations and patching keep
using the bridge; a record names the modules it was decoded with, and its replay uses the same.

Hugging Face's `sdpa` attention, given a mask (ours: left padding), repeats each K/V head for every query head it
serves, over the whole static cache, at every layer and step: at 64 slots of Llama-3.1-8B that copy is most of a
decode step. `grouped_attention` (the `grouped_` decode paths) instead packs the query heads that share a K/V head
into one attention call over the un-repeated cache at decode time (one query per slot); the prompt's forward still
repeats K/V. Every row is still computed on its own, at a shape fixed by the batch.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

WRAPPER = "._original_component"


GROUPED_ATTENTION = "cot_patching_grouped"


def grouped_attention(
    module: Any, query: Float[Tensor, "n heads q d"], key: Float[Tensor, "n kv_heads keys d"],
    value: Float[Tensor, "n kv_heads keys d"], attention_mask: Float[Tensor, "n 1 q keys"] | None,
    dropout: float = 0.0, scaling: float | None = None, **kwargs: Any,
) -> tuple[Float[Tensor, "n q heads d"], None]:
    """Scaled dot-product attention that, for one query per row, attends each K/V head once for all the query
    heads it serves (Hugging Face's calling convention for attention functions)."""
    n, heads, queries, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    if queries == 1 and groups > 1:
        packed = query.reshape(n, kv_heads, groups, dim)  # query head h reads K/V head h // groups
        out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, attn_mask=attention_mask,
                                                               scale=scaling)
        out = out.reshape(n, heads, 1, dim)
    else:
        if groups > 1:
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        # as Hugging Face's sdpa: without a mask (no padding, one sequence), causal is the module's own rule
        is_causal = (queries > 1 and attention_mask is None
                     and kwargs.get("is_causal", getattr(module, "is_causal", True)))
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                               scale=scaling, is_causal=bool(is_causal))
    return out.transpose(1, 2).contiguous(), None


def register_grouped_attention() -> str:
    """Make `grouped_attention` known to Hugging Face models as an attention implementation; its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(GROUPED_ATTENTION, grouped_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED_ATTENTION, sdpa_mask)
    return GROUPED_ATTENTION


def plain_twin(bridged: Any, attn_implementation: str = "sdpa") -> Any:
    """The bridged Hugging Face model's class and config, built without TransformerLens wrappers, holding the
    bridged model's own parameter and buffer tensors; eval mode."""
    if attn_implementation == GROUPED_ATTENTION:
        register_grouped_attention()
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
