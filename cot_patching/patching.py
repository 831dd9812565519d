"""Residual-stream patching on the same model object: overwrite cached activations, read target log-probs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from cot_patching.activations import hook_name
from cot_patching.artifacts import RunRecord


@dataclass(frozen=True)
class ResidualPatch:
    """Overwrite `blocks.{layer}.hook_{hook}` at absolute `positions` with `values` (one row per position)."""

    layer: int
    positions: Sequence[int]
    values: Float[Tensor, "pos d_model"]
    hook: str = "resid_post"

    def __post_init__(self) -> None:
        if len(self.positions) != self.values.shape[0]:
            raise ValueError(f"{len(self.positions)} positions but {self.values.shape[0]} rows of values")

    @property
    def hook_name(self) -> str:
        """The TransformerLens hook this patch writes to."""
        return hook_name(self.layer, self.hook)


def _hooks(patches: Sequence[ResidualPatch], device: torch.device) -> list[tuple[str, Any]]:
    hooks = []
    for patch in patches:
        index = torch.tensor(list(patch.positions), dtype=torch.long, device=device)

        def overwrite(resid: Tensor, hook: Any, patch: ResidualPatch = patch, index: Tensor = index) -> Tensor:
            resid = resid.clone()
            resid[:, index] = patch.values.to(device=resid.device, dtype=resid.dtype)
            return resid

        hooks.append((patch.hook_name, overwrite))
    return hooks


@torch.inference_mode()
def run_with_patches(
    model: Any, input_ids: Sequence[int], patches: Sequence[ResidualPatch] = ()
) -> Float[Tensor, "pos vocab"]:
    """Logits of one forward over `input_ids` with every patch applied."""
    tokens = torch.tensor([list(input_ids)], dtype=torch.long, device=model.device)
    logits = model.model.run_with_hooks(tokens, fwd_hooks=_hooks(patches, model.device))
    return logits[0]


def target_logprobs(
    model: Any, context_ids: Sequence[int], target_ids: Sequence[int],
    patches: Sequence[ResidualPatch] = (),
) -> Float[Tensor, "n_targets"]:
    """log p(target token | context + earlier targets) for each target token, with patches applied."""
    if not target_ids:
        raise ValueError("target_ids is empty")
    tokens = list(context_ids) + list(target_ids)
    logits = run_with_patches(model, tokens, patches)
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    start = len(context_ids)
    rows = torch.arange(start - 1, len(tokens) - 1, device=logprobs.device)
    return logprobs[rows, torch.tensor(list(target_ids), device=logprobs.device)]


def final_answer_target(record: RunRecord) -> tuple[list[int], list[int]]:
    """(context, targets): prompt + trace up to the final answer, and the answer's tokens in the trace."""
    span = record.final_answer_span
    if span is None:
        raise ValueError(f"{record.id} attempt {record.attempt} has no final answer")
    context = list(record.prompt_token_ids) + list(record.token_ids[: span["tok_start"]])
    return context, list(record.token_ids[span["tok_start"]: span["tok_end"]])


def answer_target(model: Any, record: RunRecord, answer: str) -> tuple[list[int], list[int]]:
    """(context, targets) to score `answer` (e.g. the gold) written right after the trace's `Final Answer:`."""
    span = record.final_answer_span
    if span is None:
        raise ValueError(f"{record.id} attempt {record.attempt} has no final answer")
    text_before = model.tokenizer.decode(record.token_ids[: span["tok_start"]], skip_special_tokens=True,
                                         clean_up_tokenization_spaces=False)
    gap = record.text[len(text_before): span["char_start"]]
    targets = model.tokenizer(gap + answer, add_special_tokens=False)["input_ids"]
    return list(record.prompt_token_ids) + list(record.token_ids[: span["tok_start"]]), list(targets)
