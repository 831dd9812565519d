"""Seeded rollouts from a pair's exact token prefixes: planned, decoded in shared-prefix batches, resumable, replayable.

A *prefix* is the prompt plus a trace's first `prefix_len` tokens: through step k (a step boundary) or, for a
forking token, through index i with token i replaced by an alternative. Each prefix gets `n` rollouts; rollout r of
a prefix draws from its own generator seeded with `rollout_seed(pair, tag, prefix_len, r)`, so a rollout depends on
nothing but its prefix, its seed and the batch layout it was decoded in (`decoding.batched`). The rollouts of a
prefix are decoded together: the prefix is prefilled once and its KV cache copied into their slots
(`BatchedDecoder.prefill_forked`). Each rollout is continued until end of turn or until the trace holds the run's
`max_new_tokens`, and scored with the run's own parser and scorer.

The plan (which prefixes, in which groups of `batch_size` slots) is a function of the run and the settings only;
the forking phase's plan also of the step phase's records, and is written to `forks.plan.json` before its first
group. A killed run therefore resumes into the same groups; a group cut short is decoded again, the rollouts it
had written are checked identical, and the rest appended (one fsync'd append per group).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from cot_patching.decoding.batched import BatchLayout, BatchRow, cache_len_for, sample_batch
from cot_patching.decoding.sampling import DecodeConfig
from cot_patching.localization.settings import (
    FORK_PLAN_FILE,
    ROLLOUTS_PREFIX,
    SETTINGS_FILE,
    LocalizeError,
    LocalizeSettings,
    check_settings,
    model_identity,
    still_open,
)
from cot_patching.localization.stats import Estimate, localize, step_points
from cot_patching.mining.sharding import parse_shard
from cot_patching.models.loading import LoadedModel
from cot_patching.runs.environment import environment_facts
from cot_patching.runs.files import (
    ArtifactError,
    append_fsynced,
    drop_torn_tail,
    read_json_file,
    read_jsonl_file,
    write_json,
)
from cot_patching.runs.pairing import LoadedPair
from cot_patching.runs.progress import progress_bar
from cot_patching.traces.analysis import judge_text
from cot_patching.traces.spans import decode_tokens

LABELS = ("correct", "incorrect", "unparsed")
PREFILL = "forked"  # how a group's prompts were prefilled (recorded: a replay prefills the same way)


def rollout_seed(pair_id: str, tag: str, prefix_len: int, rollout: int) -> int:
    """A rollout's seed: first 8 bytes of sha256("{pair}:{tag}:{prefix_len}:{r}"), as a 63-bit int."""
    digest = hashlib.sha256(f"{pair_id}:{tag}:{prefix_len}:{rollout}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


@dataclass(frozen=True)
class Prefix:
    """Where rollouts start: the prompt plus a trace's first `prefix_len` tokens (the last one `fork_token` for a
    forking alternative)."""

    pair_id: str
    trace: str  # "prompt" (k = 0, shared by both traces), "correct" or "incorrect"
    kind: str  # "step" or "fork"
    step: int  # k: the prefix runs through step k (forks: k* of the incorrect trace)
    prefix_len: int
    fork_index: int | None = None  # the trace index the alternative replaces
    fork_token: int | None = None
    fork_prob: float | None = None  # its untempered probability at that index

    @property
    def tag(self) -> str:
        """What, besides the pair and prefix length, tells this prefix's seeds apart."""
        return self.trace if self.kind == "step" else f"{self.trace}+{self.fork_token}"

    def tokens(self, pair: LoadedPair) -> list[int]:
        """The trace tokens of the prefix (without the prompt)."""
        if self.trace == "prompt":
            return []
        kept = list(pair.trace(self.trace).token_ids[: self.prefix_len])
        if self.kind == "fork":
            kept[-1] = int(self.fork_token)  # type: ignore[arg-type]
        return kept


@dataclass(frozen=True)
class Slot:
    """One rollout to decode: its prefix and index."""

    prefix: Prefix
    rollout: int

    @property
    def key(self) -> tuple[str, str, int, int]:
        """What identifies the rollout in the records: (pair, seed tag, prefix length, r)."""
        return self.prefix.pair_id, self.prefix.tag, self.prefix.prefix_len, self.rollout


def step_prefixes(pair: LoadedPair, max_new_tokens: int) -> list[Prefix]:
    """k = 0 (the prompt) and every step boundary of both traces that leaves room to continue."""
    prefixes = [Prefix(pair.id, "prompt", "step", 0, 0)]
    for trace in ("correct", "incorrect"):
        record = pair.trace(trace)
        for span in record.step_spans:
            end = int(span["tok_end"])
            if end < max_new_tokens:
                prefixes.append(Prefix(pair.id, trace, "step", int(span["step_idx"]), end))
    return prefixes


def slots_of(prefixes: Iterable[Prefix], count: int) -> list[Slot]:
    """Every rollout of each prefix, prefix by prefix."""
    return [Slot(prefix, r) for prefix in prefixes for r in range(count)]


def groups_of(slots: Sequence[Slot], size: int) -> list[list[Slot]]:
    """Consecutive slots in groups of `size` (a group may hold several prefixes; the last may be short)."""
    return [list(slots[i: i + size]) for i in range(0, len(slots), size)]


def select_shard(pairs: Sequence[LoadedPair], shard: str | None) -> list[LoadedPair]:
    """The pairs of shard "K/N", by the hash of the problem id as `mine --shard` splits problems (all without one)."""
    if shard is None:
        return list(pairs)
    chosen = parse_shard(shard)
    return [pair for pair in pairs if chosen.holds(pair.id)]


def rollouts_file(out_dir: Path, shard: str | None) -> Path:
    """Where this shard's rollout records go: rollouts.jsonl, or rollouts.shard-K-of-N.jsonl."""
    if shard is None:
        return out_dir / f"{ROLLOUTS_PREFIX}.jsonl"
    chosen = parse_shard(shard)
    return out_dir / f"{ROLLOUTS_PREFIX}.shard-{chosen.index}-of-{chosen.count}.jsonl"


def fork_plan_file(out_dir: Path, shard: str | None) -> Path:
    """Where this shard's fork plan goes: forks.plan.json, or forks.plan.shard-K-of-N.json."""
    name = rollouts_file(out_dir, shard).name.replace(ROLLOUTS_PREFIX, FORK_PLAN_FILE.removesuffix(".json"), 1)
    return out_dir / name.replace(".jsonl", ".json")


def read_rollouts(out_dir: Path) -> list[dict[str, Any]]:
    """Every rollout record of every shard's file in `out_dir` (a torn last line dropped)."""
    records: list[dict[str, Any]] = []
    for path in sorted(Path(out_dir).glob(f"{ROLLOUTS_PREFIX}*.jsonl")):
        for number, entry in enumerate(read_jsonl_file(path), start=1):
            if not isinstance(entry, dict) or not {"pair_id", "tag", "prefix_len", "r", "label"} <= entry.keys():
                raise ArtifactError(f"{path}:{number}: not a rollout record")
            records.append(entry)
    return records


def estimates_by_prefix(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str, int], Estimate]:
    """(pair, seed tag, prefix length) -> the estimate from its rollouts."""
    counts: dict[tuple[str, str, int], list[int]] = {}
    for record in records:
        tally = counts.setdefault((record["pair_id"], record["tag"], int(record["prefix_len"])), [0, 0, 0])
        tally[0] += 1
        tally[1] += record["label"] == "correct"
        tally[2] += record["label"] == "unparsed"
    return {key: Estimate(n, c, u) for key, (n, c, u) in counts.items()}


def pair_curves(pair: LoadedPair, estimates: dict[tuple[str, str, int], Estimate], max_new_tokens: int) -> dict[str, Any]:
    """Both traces' p_k curves (k = 0 shared) from the step phase's estimates; missing prefixes are left out."""
    prefixes = step_prefixes(pair, max_new_tokens)
    prompt = prefixes[0]
    curves = {}
    for trace in ("correct", "incorrect"):
        chosen = [prompt] + [p for p in prefixes if p.trace == trace]
        found = [(p, estimates.get((pair.id, p.tag, p.prefix_len))) for p in chosen]
        present = [(p, e) for p, e in found if e is not None]
        curves[trace] = step_points(trace, [(p.step, p.prefix_len) for p, _ in present], [e for _, e in present])
    return curves


@dataclass
class LocalizeReport:
    """What a localize call did."""

    out_dir: Path
    rollouts_done: int = 0
    rollouts_skipped: int = 0
    groups_done: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)


def _record(slot: Slot, generation: Any, config: DecodeConfig, layout: BatchLayout, label: str,
            final_answer: str | None) -> dict[str, Any]:
    prefix = slot.prefix
    return {
        "pair_id": prefix.pair_id, "trace": prefix.trace, "kind": prefix.kind, "step": prefix.step,
        "prefix_len": prefix.prefix_len, "tag": prefix.tag, "fork_index": prefix.fork_index,
        "fork_token": prefix.fork_token, "fork_prob": prefix.fork_prob, "r": slot.rollout,
        "seed": rollout_seed(prefix.pair_id, prefix.tag, prefix.prefix_len, slot.rollout),
        "temperature": config.temperature, "top_p": config.top_p, "max_new_tokens": config.max_new_tokens,
        "token_ids": generation.token_ids, "finish_reason": generation.finish_reason,
        "final_answer": final_answer, "label": label, "batch": layout.to_json(), "prefill": PREFILL,
    }


def label_of(tokenizer: Any, trace_tokens: Sequence[int], gold: str, strict: bool, cut: bool = False
             ) -> tuple[str, str | None]:
    """A rollout's label (correct / incorrect / unparsed) by the run's own parser and scorer, and its answer
    (`cut`: it stopped at max-new-tokens)."""
    verdict = judge_text(decode_tokens(tokenizer, trace_tokens), gold, strict=strict, cut=cut)
    label = "correct" if verdict.correct else ("incorrect" if verdict.parse_ok else "unparsed")
    return label, verdict.parsed.final_answer


class GroupDecoder:
    """Decodes planned groups of rollouts on one model with one cache length (one graph capture per phase)."""

    def __init__(self, model: LoadedModel, pairs: dict[str, LoadedPair], settings: LocalizeSettings,
                 groups: Sequence[Sequence[Slot]], path: str | None = None) -> None:
        self.model, self.pairs, self.settings = model, pairs, settings
        self.widths = [max(len(self._prompt(slot)) for slot in group) for group in groups]
        need = max((w + max(self._budget(s) for s in g) for w, g in zip(self.widths, groups)), default=1)
        self.cache_len = cache_len_for(need, 0)
        self.decoder = model.batched_decoder(settings.batch_size, self.cache_len, path)
        self.single = model.batched_decoder(1, self.cache_len, self.decoder.path)

    def _prompt(self, slot: Slot) -> list[int]:
        pair = self.pairs[slot.prefix.pair_id]
        return list(pair.correct.prompt_token_ids) + slot.prefix.tokens(pair)

    def _budget(self, slot: Slot) -> int:
        return self.settings.max_new_tokens - slot.prefix.prefix_len

    def decode(self, group: Sequence[Slot], number: int, width: int) -> list[dict[str, Any]]:
        """Decode one group in slot order; its records."""
        settings = self.settings
        configs = [DecodeConfig(settings.temperature, settings.top_p, self._budget(slot)) for slot in group]
        rows: list[BatchRow | None] = [
            BatchRow(self._prompt(slot), config, rollout_seed(*slot.key)) for slot, config in zip(group, configs)]
        rows += [None] * (settings.batch_size - len(rows))
        generations = sample_batch(self.decoder, rows, self.model.stop_token_ids, width=width, fork_from=self.single)
        records = []
        for index, (slot, config, generation) in enumerate(zip(group, configs, generations)):
            assert generation is not None
            pair = self.pairs[slot.prefix.pair_id]
            layout = BatchLayout(size=settings.batch_size, slot=index, width=width, cache_len=self.cache_len,
                                 path=self.decoder.path, group=number, rows=len(group), shard=settings.shard)
            label, answer = label_of(self.model.tokenizer, slot.prefix.tokens(pair) + generation.token_ids,
                                     pair.pair.gold_answer, settings.strict_format,
                                     cut=generation.finish_reason == "length")
            records.append(_record(slot, generation, config, layout, label, answer))
        return records


def _key(record: dict[str, Any]) -> tuple[str, str, int, int]:
    return record["pair_id"], record["tag"], int(record["prefix_len"]), int(record["r"])


def _same_rollout(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(name) == b.get(name) for name in ("token_ids", "seed", "batch", "label"))


def run_phase(
    model: LoadedModel, pairs: dict[str, LoadedPair], settings: LocalizeSettings, slots: Sequence[Slot],
    path_file: Path, first_group: int, report: LocalizeReport, progress: Any = None, decode_path: str | None = None,
) -> int:
    """Decode every planned group not yet on disk (group numbers from `first_group`); the next group number."""
    import time

    groups = groups_of(slots, settings.batch_size)
    if not groups:
        return first_group
    on_disk = {_key(r): r for r in read_rollouts_file(path_file)}
    decoder: GroupDecoder | None = None
    for offset, group in enumerate(groups):
        present = [on_disk.get(slot.key) for slot in group]
        if all(r is not None for r in present):
            report.rollouts_skipped += len(group)
            if progress is not None:
                progress.update(len(group))
            continue
        if decoder is None:
            decoder = GroupDecoder(model, pairs, settings, groups, decode_path)
        started = time.perf_counter()
        records = decoder.decode(group, first_group + offset, decoder.widths[offset])
        for old, new in zip(present, records):
            if old is not None and not _same_rollout(old, new):
                raise LocalizeError(f"rollout {new['r']} of {new['pair_id']} ({new['tag']}, prefix {new['prefix_len']})"
                                    f", decoded again to finish group {first_group + offset}, differs from its record:"
                                    " this machine or software does not reproduce the localization")
        missing = [new for old, new in zip(present, records) if old is None]
        append_fsynced(path_file, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in missing))
        report.rollouts_done += len(missing)
        report.rollouts_skipped += len(group) - len(missing)
        report.groups_done += 1
        report.new_tokens += sum(len(r["token_ids"]) for r in records)
        report.seconds += time.perf_counter() - started
        if progress is not None:
            progress.update(len(group))
    return first_group + len(groups)


def read_rollouts_file(path: Path) -> list[dict[str, Any]]:
    """One rollout file's records after dropping a torn last line a kill left (the file is append-only)."""
    if not path.exists():
        return []
    drop_torn_tail(path)
    return [entry for entry in read_jsonl_file(path) if isinstance(entry, dict)]


def fork_plan(model: LoadedModel, pairs: Sequence[LoadedPair], kstars: dict[str, int | None],
              threshold: float) -> list[dict[str, Any]]:
    """Per pair with a k*: each index of step k* of the incorrect trace where some token other than the trace's
    has p > threshold (untempered), with every such alternative and the trace's own token."""
    plan = []
    for pair in pairs:
        kstar = kstars.get(pair.id)
        if kstar is None:
            continue
        record = pair.incorrect
        span = next(s for s in record.step_spans if int(s["step_idx"]) == kstar)
        prompt = list(record.prompt_token_ids)
        ids = torch.tensor([prompt + list(record.token_ids)], dtype=torch.long, device=model.device)
        with torch.inference_mode():
            probs = torch.softmax(model.logits(ids)[0].float(), dim=-1)
        for index in range(int(span["tok_start"]), int(span["tok_end"])):
            if index + 1 >= record.max_new_tokens:
                continue
            row = probs[len(prompt) + index - 1]
            actual = int(record.token_ids[index])
            above = torch.nonzero(row > threshold).flatten().tolist()
            if not [t for t in above if t != actual]:
                continue
            tokens = sorted(set(above) | {actual}, key=lambda t: (-float(row[t]), t))
            plan.append({"pair_id": pair.id, "step": kstar, "index": index,
                         "alternatives": [{"token": t, "prob": round(float(row[t]), 6), "actual": t == actual}
                                          for t in tokens]})
    return plan


def fork_prefixes(plan: Sequence[dict[str, Any]]) -> list[Prefix]:
    """The prefixes of a fork plan: each alternative at each index (prefix through the index, token replaced)."""
    return [Prefix(entry["pair_id"], "incorrect", "fork", entry["step"], entry["index"] + 1, entry["index"],
                   alt["token"], alt["prob"]) for entry in plan for alt in entry["alternatives"]]


def kstars_from(pairs: Sequence[LoadedPair], records: Iterable[dict[str, Any]], max_new_tokens: int
                ) -> dict[str, int | None]:
    """k* of each pair from its step rollouts."""
    estimates = estimates_by_prefix(r for r in records if r.get("kind") == "step")
    kstars = {}
    for pair in pairs:
        curves = pair_curves(pair, estimates, max_new_tokens)
        kstars[pair.id] = localize(curves["incorrect"], curves["correct"]).kstar
    return kstars


def localize_run(
    model: LoadedModel, run_dir: Path, out_dir: Path, settings: LocalizeSettings, pairs: Sequence[LoadedPair],
    info: dict[str, Any], argv: Sequence[str] = (), progress: bool = False, decode_path: str | None = None,
) -> LocalizeReport:
    """Decode the step rollouts, then the forking rollouts inside each pair's k*, into `out_dir`; resumable."""
    import time

    from cot_patching.runs.directory import directory_lock

    out_dir.mkdir(parents=True, exist_ok=True)
    report = LocalizeReport(out_dir)
    identity = model_identity(info)
    with directory_lock(out_dir):
        record, settings = check_settings(out_dir, settings, identity, [p.id for p in pairs])
        record["sessions"].append({"argv": list(argv), "shard": settings.shard,
                                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                   "environment": environment_facts()})
        write_json(out_dir / SETTINGS_FILE, record)
        mine = select_shard(pairs, settings.shard)
        by_id = {p.id: p for p in mine}
        path_file = rollouts_file(out_dir, settings.shard)
        prefixes = [p for pair in mine for p in step_prefixes(pair, settings.max_new_tokens)]
        started = time.perf_counter()
        next_group, low = 0, 0
        for bound in settings.rounds:
            estimates = estimates_by_prefix(r for r in read_rollouts_file(path_file)
                                            if r.get("kind") == "step" and int(r["r"]) < low)
            open_prefixes = [p for p in prefixes if low == 0 or still_open(
                estimates.get((p.pair_id, p.tag, p.prefix_len)), settings.stop_width)]
            slots = [Slot(p, r) for p in open_prefixes for r in range(low, bound)]
            label = "rollouts" if len(settings.rounds) == 1 else f"rollouts {low}-{bound - 1}"
            bar = progress_bar(len(slots), label, "rollout", progress)
            next_group = run_phase(model, by_id, settings, slots, path_file, next_group, report, bar, decode_path)
            if bar is not None:
                bar.close()
            low = bound
        report.phases["steps"] = time.perf_counter() - started
        if settings.fork_rollouts > 0:
            plan_path = fork_plan_file(out_dir, settings.shard)
            if plan_path.exists():
                plan = read_json_file(plan_path, list)
            else:
                kstars = kstars_from(mine, read_rollouts_file(path_file), settings.max_new_tokens)
                plan = fork_plan(model, mine, kstars, settings.fork_threshold)
                write_json(plan_path, plan)
            fork_slots = slots_of(fork_prefixes(plan), settings.fork_rollouts)
            bar = progress_bar(len(fork_slots), "fork rollouts", "rollout", progress)
            started = time.perf_counter()
            run_phase(model, by_id, settings, fork_slots, path_file, next_group, report, bar, decode_path)
            report.phases["forks"] = time.perf_counter() - started
            if bar is not None:
                bar.close()
    return report


def verify_rollouts(model: LoadedModel, pairs: dict[str, LoadedPair], records: Sequence[dict[str, Any]],
                    every: int = 1) -> tuple[int, int, list[str]]:
    """Decode every `every`-th recorded group again in its recorded layout; (rollouts compared, identical, first
    differences)."""
    by_group: dict[tuple[str | None, int], list[dict[str, Any]]] = {}
    for record in records:
        layout = record["batch"]
        by_group.setdefault((layout.get("shard"), int(layout["group"])), []).append(record)
    compared = identical = 0
    differences: list[str] = []
    for number, (_, group) in enumerate(sorted(by_group.items(), key=lambda item: (str(item[0][0]), item[0][1]))):
        if number % every:
            continue
        layout = BatchLayout.from_json(group[0]["batch"])
        decoder = model.batched_decoder(layout.size, layout.cache_len, layout.path)
        single = model.batched_decoder(1, layout.cache_len, layout.path)
        rows: list[BatchRow | None] = [None] * layout.size
        for record in group:
            pair = pairs[record["pair_id"]]
            prefix = Prefix(record["pair_id"], record["trace"], record["kind"], record["step"], record["prefix_len"],
                            record["fork_index"], record["fork_token"], record["fork_prob"])
            rows[int(record["batch"]["slot"])] = BatchRow(
                list(pair.correct.prompt_token_ids) + prefix.tokens(pair),
                DecodeConfig(record["temperature"], record["top_p"], record["max_new_tokens"]), int(record["seed"]))
        generations = sample_batch(decoder, rows, model.stop_token_ids, width=layout.width, fork_from=single)
        for record in group:
            generation = generations[int(record["batch"]["slot"])]
            compared += 1
            if generation is not None and generation.token_ids == record["token_ids"]:
                identical += 1
            elif len(differences) < 5:
                differences.append(f"{record['pair_id']} {record['tag']} prefix {record['prefix_len']} r "
                                   f"{record['r']}")
    return compared, identical, differences


def finite(value: float) -> float | None:
    """A float for JSON: None for nan."""
    return None if value is None or math.isnan(value) else round(value, 6)

