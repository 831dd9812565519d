"""Re-run a logged attempt from its recorded fields and check its tokens match exactly (SPEC §4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from cot_patching.artifacts import RunRecord
from cot_patching.decoding.batched import BatchLayout, BatchRow, replay_in_slot
from cot_patching.decoding.sampling import DecodeConfig, Generation, sample


@dataclass(frozen=True)
class ReplayResult:
    """Whether a replay reproduced the logged token ids, and where it first diverged."""

    id: str
    attempt: int
    match: bool
    n_logged: int
    n_replayed: int
    first_mismatch: int | None  # token index of the first difference, None if identical


def first_mismatch(logged: Sequence[int], replayed: Sequence[int]) -> int | None:
    """Index of the first token where two sequences differ (a length difference counts), None if identical."""
    mismatch = next((i for i, (a, b) in enumerate(zip(logged, replayed)) if a != b), None)
    if mismatch is None and len(logged) != len(replayed):
        mismatch = min(len(logged), len(replayed))
    return mismatch


def replay_attempt(model: Any, record: RunRecord) -> ReplayResult:
    """Decode the record's prompt ids again with its temperature, top-p, max tokens and seed."""
    config = DecodeConfig(record.temperature, record.top_p, record.max_new_tokens)
    if record.error is not None:  # an attempt that failed: replaying it must fail the same way
        try:
            decode_again(model, record, config)
        except Exception as err:  # noqa: BLE001 - any failure is compared with the logged one by its type
            same = record.error.startswith(f"{type(err).__name__}:")
            return ReplayResult(id=record.id, attempt=record.attempt, match=same, n_logged=0, n_replayed=0,
                                first_mismatch=None if same else 0)
        return ReplayResult(id=record.id, attempt=record.attempt, match=False, n_logged=0, n_replayed=0,
                            first_mismatch=0)
    generation = decode_again(model, record, config)
    logged, replayed = record.token_ids, generation.token_ids
    mismatch = first_mismatch(logged, replayed)
    return ReplayResult(
        id=record.id, attempt=record.attempt, match=mismatch is None,
        n_logged=len(logged), n_replayed=len(replayed), first_mismatch=mismatch,
    )


def decode_again(model: Any, record: RunRecord, config: DecodeConfig) -> Generation:
    """Decode a record's attempt the way it was mined: alone, or in its slot of a batch of its recorded shape."""
    if record.batch is None:
        return sample(model, record.prompt_token_ids, config, record.seed)
    layout = BatchLayout.from_json(record.batch)
    decoder = model.batched_decoder(layout.size, layout.cache_len, layout.path)
    return replay_in_slot(decoder, BatchRow(record.prompt_token_ids, config, record.seed), layout,
                          model.stop_token_ids)
