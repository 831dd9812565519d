"""Residual-stream patching on the same model object: overwrite activations, read target log-probs.

A forward may hold several rows (right-padded sequences); each row gets its own patches, so one forward can
evaluate several patching cells. Right padding never changes a causal model's earlier positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from cot_patching.activations.cache import hook_name
from cot_patching.models.loading import LoadedModel
from cot_patching.runs.records import RunRecord


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


def padded_batch(rows: Sequence[Sequence[int]], pad_id: int = 0) -> Int[Tensor, "row pos"]:
    """Token rows right-padded with `pad_id` into one [row, pos] tensor."""
    if not rows or any(len(row) == 0 for row in rows):
        raise ValueError("every row needs at least one token")
    width = max(len(row) for row in rows)
    return torch.tensor([list(row) + [pad_id] * (width - len(row)) for row in rows], dtype=torch.long)


def _row_hooks(patches_by_row: Sequence[Sequence[ResidualPatch]], device: torch.device
               ) -> list[tuple[str, Callable[..., Tensor]]]:
    """One hook per hook name, writing each row's patches into that row."""
    by_name: dict[str, list[tuple[int, Tensor, ResidualPatch]]] = {}
    for row, patches in enumerate(patches_by_row):
        for patch in patches:
            index = torch.tensor(list(patch.positions), dtype=torch.long, device=device)
            by_name.setdefault(patch.hook_name, []).append((row, index, patch))

    hooks = []
    for name, writes in by_name.items():
        def overwrite(resid: Tensor, hook: Any, writes: list[tuple[int, Tensor, ResidualPatch]] = writes) -> Tensor:
            resid = resid.clone()
            for row, index, patch in writes:
                if int(index.max()) >= resid.shape[1]:
                    raise ValueError(f"patch position {int(index.max())} is past the end of a "
                                     f"{resid.shape[1]}-token input")
                resid[row, index] = patch.values.to(device=resid.device, dtype=resid.dtype)
            return resid

        hooks.append((name, overwrite))
    return hooks


@torch.inference_mode()
def run_rows_with_patches(
    model: LoadedModel, rows: Sequence[Sequence[int]], patches_by_row: Sequence[Sequence[ResidualPatch]] | None = None,
) -> Float[Tensor, "row pos vocab"]:
    """Logits of one forward over right-padded `rows`, row r with `patches_by_row[r]` applied."""
    patches_by_row = patches_by_row if patches_by_row is not None else [()] * len(rows)
    if len(patches_by_row) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(patches_by_row)} lists of patches")
    tokens = padded_batch(rows).to(model.device)
    return model.model.run_with_hooks(tokens, fwd_hooks=_row_hooks(patches_by_row, model.device))


def run_with_patches(
    model: LoadedModel, input_ids: Sequence[int], patches: Sequence[ResidualPatch] = ()
) -> Float[Tensor, "pos vocab"]:
    """Logits of one forward over `input_ids` with every patch applied."""
    return run_rows_with_patches(model, [input_ids], [patches])[0]


def rows_target_logprobs(
    logits: Float[Tensor, "row pos vocab"], contexts: Sequence[int], targets: Sequence[Sequence[int]],
) -> list[Float[Tensor, "n_targets"]]:
    """log p(each target token | its row's context and earlier targets), from one batch's logits."""
    out = []
    for row, (context_len, target_ids) in enumerate(zip(contexts, targets)):
        logprobs = torch.log_softmax(logits[row].float(), dim=-1)
        positions = torch.arange(context_len - 1, context_len - 1 + len(target_ids), device=logprobs.device)
        out.append(logprobs[positions, torch.tensor(list(target_ids), device=logprobs.device)])
    return out


def target_logprobs(
    model: LoadedModel, context_ids: Sequence[int], target_ids: Sequence[int],
    patches: Sequence[ResidualPatch] = (),
) -> Float[Tensor, "n_targets"]:
    """log p(target token | context + earlier targets) for each target token, with patches applied."""
    if not target_ids:
        raise ValueError("target_ids is empty")
    logits = run_rows_with_patches(model, [list(context_ids) + list(target_ids)], [patches])
    return rows_target_logprobs(logits, [len(context_ids)], [target_ids])[0]


def final_answer_target(record: RunRecord) -> tuple[list[int], list[int]]:
    """(context, targets): prompt + trace up to the final answer, and the answer's tokens in the trace."""
    span = record.final_answer_span
    if span is None:
        raise ValueError(f"{record.id} attempt {record.attempt} has no final answer")
    context = list(record.prompt_token_ids) + list(record.token_ids[: span["tok_start"]])
    return context, list(record.token_ids[span["tok_start"]: span["tok_end"]])


def answer_target(model: LoadedModel, record: RunRecord, answer: str) -> tuple[list[int], list[int]]:
    """(context, targets) to score `answer` (e.g. the gold) written right after the trace's `Final Answer:`."""
    span = record.final_answer_span
    if span is None:
        raise ValueError(f"{record.id} attempt {record.attempt} has no final answer")
    text_before = model.tokenizer.decode(record.token_ids[: span["tok_start"]], skip_special_tokens=True,
                                         clean_up_tokenization_spaces=False)
    gap = record.text[len(text_before): span["char_start"]]
    targets = model.tokenizer(gap + answer, add_special_tokens=False)["input_ids"]
    return list(record.prompt_token_ids) + list(record.token_ids[: span["tok_start"]]), list(targets)
