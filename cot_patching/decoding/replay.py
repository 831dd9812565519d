"""Re-run a logged attempt from its recorded fields and check its tokens match exactly (SPEC §4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from cot_patching.decoding.batched import BatchLayout, BatchRow, sample_batch
from cot_patching.decoding.sampling import DecodeConfig, Generation, sample
from cot_patching.runs.files import ArtifactError
from cot_patching.runs.records import RunRecord


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
    return compared(record, decode_again(model, record, config).token_ids)


def compared(record: RunRecord, replayed: Sequence[int]) -> ReplayResult:
    """How replayed token ids compare with the record's."""
    mismatch = first_mismatch(record.token_ids, replayed)
    return ReplayResult(id=record.id, attempt=record.attempt, match=mismatch is None,
                        n_logged=len(record.token_ids), n_replayed=len(replayed), first_mismatch=mismatch)


def decode_again(model: Any, record: RunRecord, config: DecodeConfig) -> Generation:
    """Decode a record's attempt the way it was mined: alone, or in its slot of a batch of its recorded shape."""
    if record.batch is None:
        return sample(model, record.prompt_token_ids, config, record.seed)
    layout = BatchLayout.from_json(record.batch)
    return decode_in_slots(model, layout, {layout.slot: record})[layout.slot]


def decode_in_slots(model: Any, layout: BatchLayout, records: dict[int, RunRecord]) -> dict[int, Generation]:
    """Decode records together, each in its slot (key) of one batch of `layout`'s shape, the other slots idle."""
    rows: list[BatchRow | None] = [None] * layout.size
    for slot, record in records.items():
        rows[slot] = BatchRow(record.prompt_token_ids,
                              DecodeConfig(record.temperature, record.top_p, record.max_new_tokens), record.seed)
    decoder = model.batched_decoder(layout.size, layout.cache_len, layout.path)
    generations = sample_batch(decoder, rows, model.stop_token_ids, width=layout.width)
    return {slot: generation for slot, generation in enumerate(generations) if generation is not None}


def replay_attempts(model: Any, records: Sequence[RunRecord], isolated: bool = False
                    ) -> Iterator[tuple[RunRecord, ReplayResult]]:
    """Replay records, each with its result, as they finish: batch-1 records one at a time; batched records
    several to a batch of their recorded shape, each in its own recorded slot (rows never mix, so a slot decodes
    what it would decode alone), or, with `isolated`, each alone in its slot of an otherwise idle batch."""
    records = list(records)
    vocab = int(model.model.cfg.d_vocab)
    for record in records:  # all checked before any is decoded: a damaged record stops the replay with one line
        outside = [t for t in [*record.prompt_token_ids, *record.token_ids]
                   if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab]
        if outside:
            raise ArtifactError(f"{record.id} attempt {record.attempt}: token id {outside[0]!r} is outside the "
                                f"model's vocabulary (0..{vocab - 1})")
    open_batches: dict[tuple[int, int, int, str], list[dict[int, RunRecord]]] = {}
    for record in records:
        if record.batch is None or record.error is not None or isolated:
            yield record, replay_attempt(model, record)
            continue
        layout = BatchLayout.from_json(record.batch)
        batches = open_batches.setdefault((layout.size, layout.width, layout.cache_len, layout.path), [])
        index = next((i for i, batch in enumerate(batches) if layout.slot not in batch), len(batches))
        if index == len(batches):
            batches.append({})
        batches[index][layout.slot] = record
        if len(batches[index]) == layout.size:
            yield from _replay_batch(model, batches.pop(index))
    for batches in open_batches.values():
        for batch in batches:
            yield from _replay_batch(model, batch)


def _replay_batch(model: Any, batch: dict[int, RunRecord]) -> Iterator[tuple[RunRecord, ReplayResult]]:
    """Replay records of one batch shape together, each in its slot."""
    layout = BatchLayout.from_json(next(iter(batch.values())).batch or {})
    generations = decode_in_slots(model, layout, batch)
    for slot, record in sorted(batch.items()):
        yield record, compared(record, generations[slot].token_ids)
