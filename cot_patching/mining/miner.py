"""Mine (correct, incorrect) trace pairs per problem, resumably, into an output directory (SPEC §4, §6)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from cot_patching.decoding.batched import (
    BatchLayout,
    BatchRow,
    cache_len_for,
    largest_batch_size,
    sample_batch,
    slot_bytes,
)
from cot_patching.decoding.sampling import DecodeConfig, Generation, attempt_seed, sample
from cot_patching.mining.settings import MineSettings
from cot_patching.models.backends import BRIDGE
from cot_patching.models.loading import LoadedModel
from cot_patching.problems import Problem
from cot_patching.runs import artifacts
from cot_patching.runs.directory import RunDirectory, check_not_locked
from cot_patching.runs.files import ArtifactError
from cot_patching.runs.manifest import ModelIdentity, RunManifest, Session
from cot_patching.runs.progress import progress_bar
from cot_patching.runs.records import PairRecord, RunLine, RunRecord, RunsAppender, read_pairs
from cot_patching.runs.stop_rule import run_finished
from cot_patching.runs.tally import RunTally, write_derived
from cot_patching.traces.analysis import analyze_trace
from cot_patching.traces.prompt import EncodedPrompt, build_prompt, encode_prompt


class MiningError(RuntimeError):
    """A mining run that cannot start or continue as asked."""


def problems_sha256(path: str | Path) -> str:
    """sha256 of a problems file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class MineResult:
    """What a mining call did and where the run stands."""

    summary: dict[str, Any]
    pairs: list[PairRecord]
    attempts_this_call: int
    resumed_from: int  # attempts already on disk when the call began


Sampler = Callable[[Any, Sequence[int], DecodeConfig, int], Generation]


def read_runs_or_explain(outdir: Path, resume: bool = False) -> list[RunLine]:
    """runs.jsonl's records (`resume`: after dropping a torn last line); a damaged line is refused with the way to
    recover that loses nothing."""
    run = RunDirectory(Path(outdir))
    try:
        return run.resume() if resume else run.runs()
    except ArtifactError as err:
        raise MiningError(
            f"{err}; nothing was changed. `cot-patching repair {outdir}` sets damaged lines aside in "
            f"{artifacts.SET_ASIDE_FILE} with the attempts of the same problems after them (nothing is deleted); "
            "then rerun this command: it decodes those attempts again, identically"
        ) from None


def check_outdir(outdir: Path, settings: MineSettings, overwrite: bool, model_revision: str | None = None) -> None:
    """Refuse, without writing anything, an outdir that is a file or holds a run with other settings or (when
    `model_revision` is given) mined from another revision of the model."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise MiningError(f"--outdir {outdir} exists and is not a directory")
    if not outdir.is_dir():
        parent = next((p for p in outdir.parents if p.exists()), Path("."))
        if not os.access(parent, os.W_OK):
            raise MiningError(f"cannot create --outdir {outdir}: {parent} is not writable")
        return
    if not os.access(outdir, os.W_OK):
        raise MiningError(f"--outdir {outdir} is not writable")
    check_not_locked(outdir)
    if overwrite:
        owned_run_files(outdir)  # refuses, before anything is deleted, an activations folder with foreign files
        return
    run = RunDirectory(outdir)
    if run.manifest_path.exists():
        manifest = run.manifest()
        recorded = manifest.settings
        mined_revision = manifest.model.revision
        if model_revision and mined_revision and model_revision != mined_revision:
            raise MiningError(f"{outdir} was mined from model revision {mined_revision}, the model loaded now is "
                              f"{model_revision}: its attempts would not replay; use a new --outdir or pass "
                              "--overwrite")
        for key, value in settings.to_json().items():
            if key == "trace_rules_version" and recorded.get(key) != value:
                raise MiningError(
                    f"{outdir} was labelled with trace rules version {recorded.get(key)}, this is version {value}; "
                    f"relabel it first with `cot-patching repair {outdir}` (token ids never change), then resume"
                )
            if recorded.get(key) != value:
                raise MiningError(
                    f"{outdir} was mined with different settings: {key} is {recorded.get(key)!r} there, "
                    f"{value!r} now; use a new --outdir or pass --overwrite"
                )
    elif run.runs_path.exists() and run.runs_path.stat().st_size > 0:
        raise MiningError(f"{outdir} has {artifacts.RUNS_FILE} but no {artifacts.MANIFEST_FILE}; "
                          "use a new --outdir or pass --overwrite")
    read_runs_or_explain(outdir)


RUN_FILES = (artifacts.RUNS_FILE, artifacts.PAIRS_FILE, artifacts.PAIRS_CSV, artifacts.SUMMARY_FILE,
             artifacts.MANIFEST_FILE, artifacts.SET_ASIDE_FILE)


def owned_run_files(outdir: Path) -> list[Path]:
    """The files `--overwrite` removes: the run's own and those of its activation cache (only files the cache
    wrote; a cache folder holding anything else is refused)."""
    try:
        pair_ids = [pair.id for pair in read_pairs(RunDirectory(outdir).pairs_path)]
    except (ValueError, TypeError):
        pair_ids = []
    cache = artifacts.owned_cache_files(RunDirectory(outdir).activations_dir, pair_ids)
    return [outdir / name for name in RUN_FILES if (outdir / name).is_file()] + cache


def clear_outdir(outdir: Path) -> None:
    """Remove a previous run's files and its activation cache's (for `--overwrite`); nothing else."""
    for path in owned_run_files(outdir):
        path.unlink(missing_ok=True)
    cache = RunDirectory(outdir).activations_dir
    if cache.is_dir() and not any(cache.iterdir()):
        cache.rmdir()


def mine(
    problems: Sequence[Problem],
    model: LoadedModel,
    settings: MineSettings,
    outdir: str | Path,
    min_pairs: int = 20,
    manifest: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    sampler: Sampler = sample,
) -> MineResult:
    """Run the attempt schedule on each problem until `min_pairs` pairs or no problems are left."""
    outdir = Path(outdir)
    model_backend = getattr(getattr(model, "info", None), "backend", None) or settings.backend or BRIDGE
    if settings.backend not in (None, model_backend):
        raise MiningError(f"settings ask for backend {settings.backend!r} but the model runs on {model_backend!r}")
    settings = replace(settings, backend=model_backend)
    if settings.batch_size > 1 and model_backend != BRIDGE:
        raise MiningError(f"--batch-size {settings.batch_size} decodes on the bridge backend; the {model_backend} "
                          "backend mines one attempt at a time (use --batch-size 1)")
    check_outdir(outdir, settings, overwrite, _loaded_revision(model))
    outdir.mkdir(parents=True, exist_ok=True)
    run = RunDirectory(outdir)
    with run.lock():
        if overwrite:
            clear_outdir(outdir)
        runs = read_runs_or_explain(outdir, resume=True)
        _check_runs_match(runs, problems)
        session = dict(manifest or {})
        # the stop rule a merge of this shard must apply is the one this call ran, whoever called
        session["options"] = {**(session.get("options") or {}), "min_pairs": min_pairs}
        _record_session(outdir, session, settings)
        resumed_from = len(runs)
        questions = {p.id: p.question for p in problems}

        tally = RunTally(runs, questions, settings.pair_unparsed, settings.strict_format)
        write_derived(outdir, tally.pairs, tally.summary())
        bar = progress_bar(len(problems), "problems", "problem", progress)
        with run.appender() as appender:
            if settings.batch_size == 1:
                attempts_this_call = _mine_one_at_a_time(problems, model, settings, outdir, min_pairs, tally,
                                                         appender, bar, sampler)
            else:
                attempts_this_call = _mine_in_groups(problems, model, settings, outdir, min_pairs, tally, runs,
                                                     appender, bar)
        if bar is not None:
            bar.close()
    return MineResult(summary=tally.summary(), pairs=tally.pairs, attempts_this_call=attempts_this_call,
                      resumed_from=resumed_from)



def _mine_one_at_a_time(
    problems: Sequence[Problem], model: LoadedModel, settings: MineSettings, outdir: Path, min_pairs: int,
    tally: RunTally, appender: RunsAppender, bar: Any, sampler: Sampler,
) -> int:
    """The seed protocol: each problem's attempts in order until its pair, problems in file order; attempts made."""
    schedule = settings.schedule
    attempts_this_call = 0
    for problem in problems:
        if run_finished(len(tally.pairs), min_pairs):
            break
        made = len(tally.by_problem.get(problem.id, []))
        if not _finished(problem.id, tally, schedule):
            prompt = encode_prompt(model.tokenizer, build_prompt(problem.question))
            for attempt in range(made, len(schedule)):
                try:
                    record = run_attempt(model, problem, prompt, attempt, schedule[attempt], settings, sampler)
                except DETERMINISTIC_ERRORS as err:
                    if _is_device_error(err):
                        raise
                    record = failed_attempt(problem, prompt, attempt, schedule[attempt], settings, err,
                                            _loaded_revision(model), loaded_model_name(model, settings))
                offset = appender.append(record)
                attempts_this_call += 1
                tally.write(outdir, tally.add(RunLine(offset, record)))  # derived files lag by this line
                if problem.id in tally.by_id:  # the stop rule: this problem has its pair
                    break
        _show_progress(bar, tally, min_pairs)
    return attempts_this_call


def _show_progress(bar: Any, tally: RunTally, min_pairs: int, done: int = 1) -> None:
    if bar is not None:
        bar.update(done)
        bar.set_postfix(pairs=f"{len(tally.pairs)}/{min_pairs}", attempts=tally.counts.attempts)


def unfinished_group(runs: Sequence[RunLine]) -> list[RunLine]:
    """The lines of the last batch group if a kill stopped it before all its attempts were written, else []."""
    if not runs or runs[-1].record.batch is None:
        return []
    last = BatchLayout.from_json(runs[-1].record.batch)
    lines = [line for line in runs if line.record.batch is not None
             and BatchLayout.from_json(line.record.batch).group_key == last.group_key]
    return lines if len(lines) < last.rows else []


def next_group(
    problems: Sequence[Problem], tally: RunTally, schedule: Sequence[float], size: int,
    held: dict[str, int] | None = None,
) -> list[tuple[Problem, int]]:
    """The next attempts to decode together: the first `size` problems in file order that are still due (no pair,
    tries left), each with its next attempt; `held` overrides (problem id -> attempt) for a group being finished."""
    held = held or {}
    group: list[tuple[Problem, int]] = []
    for problem in problems:
        if problem.id in held:
            group.append((problem, held[problem.id]))
        else:
            if not _finished(problem.id, tally, schedule):
                group.append((problem, len(tally.by_problem.get(problem.id, []))))
        if len(group) == size:
            break
    return group


def _mine_in_groups(
    problems: Sequence[Problem], model: LoadedModel, settings: MineSettings, outdir: Path, min_pairs: int,
    tally: RunTally, runs: Sequence[RunLine], appender: RunsAppender, bar: Any,
) -> int:
    """`--batch-size N`: decode the next attempt of the first N due problems together, record them in slot order,
    repeat until `min_pairs` pairs (checked between groups) or no problem is due; attempts made.

    Which attempts form a group depends only on what runs.jsonl holds before it, so a group a kill cut short is
    formed again on resume, its written attempts are decoded again and checked identical, and the rest appended.
    """
    schedule, size = settings.schedule, settings.batch_size
    revision = _loaded_revision(model)
    held_lines = {line.record.id: line for line in unfinished_group(runs)}
    group_number = max((line.record.batch["group"] for line in runs if line.record.batch is not None), default=-1)
    group_number = group_number if held_lines else group_number + 1
    prompts = {p.id: encode_prompt(model.tokenizer, build_prompt(p.question)) for p in problems}
    # One cache length for the whole run (room for its widest prompt): one decoder, one graph capture.
    widest = max((len(prompt.token_ids) for prompt in prompts.values()), default=1)
    cache_len = cache_len_for(widest, settings.max_new_tokens)
    _check_batch_fits(model, size, cache_len, widest)
    decoder = model.batched_decoder(size, cache_len)
    attempts_this_call = 0
    if bar is not None:
        bar.update(sum(1 for p in problems if _finished(p.id, tally, schedule)))
    while held_lines or not run_finished(len(tally.pairs), min_pairs):
        group = next_group(problems, tally, schedule, size, {k: v.record.attempt for k, v in held_lines.items()})
        if not group:
            break
        width = max(len(prompts[p.id].token_ids) for p, _ in group)
        rows: list[BatchRow | None] = [
            BatchRow(prompts[p.id].token_ids, DecodeConfig(schedule[a], settings.top_p, settings.max_new_tokens),
                     attempt_seed(p.id, a)) for p, a in group]
        rows += [None] * (size - len(rows))
        generations = sample_batch(decoder, rows, model.stop_token_ids, width=width)
        finished_before = sum(1 for p, _ in group if _finished(p.id, tally, schedule))
        for slot, ((problem, attempt), generation) in enumerate(zip(group, generations)):
            assert generation is not None
            layout = BatchLayout(size=size, slot=slot, width=width, cache_len=cache_len, path=decoder.path,
                                 group=group_number, rows=len(group), shard=settings.shard)
            held = held_lines.pop(problem.id, None)
            if held is not None:
                if held.record.token_ids != generation.token_ids or held.record.batch != layout.to_json():
                    raise MiningError(f"{problem.id} attempt {attempt} of batch group {group_number}, decoded again "
                                      "to finish the group a kill cut short, differs from its record: this machine "
                                      "or software does not reproduce the run; use the machine it was mined on")
                continue
            prompt = prompts[problem.id]
            try:
                record = attempt_record(model, problem, prompt, attempt, schedule[attempt], settings, generation,
                                        layout)
            except DETERMINISTIC_ERRORS as err:
                if _is_device_error(err):
                    raise
                record = replace(failed_attempt(problem, prompt, attempt, schedule[attempt], settings, err, revision,
                                                loaded_model_name(model, settings)), batch=layout.to_json())
            offset = appender.append(record)
            attempts_this_call += 1
            tally.write(outdir, tally.add(RunLine(offset, record)))
        held_lines = {}
        group_number += 1
        finished_after = sum(1 for p, _ in group if _finished(p.id, tally, schedule))
        _show_progress(bar, tally, min_pairs, finished_after - finished_before)
    return attempts_this_call


def _check_batch_fits(model: LoadedModel, size: int, cache_len: int, width: int) -> None:
    """Refuse, before decoding, a batch size whose caches and buffers do not fit the GPU's free memory."""
    import torch

    device = getattr(model, "device", None)
    if not isinstance(device, torch.device) or device.type != "cuda":
        return
    free, _ = torch.cuda.mem_get_info(device)
    hf_model = model.model.original_model
    fits = largest_batch_size(hf_model, cache_len, width, free)
    if size > fits:
        need = size * slot_bytes(hf_model, cache_len, width) / 2**30
        raise MiningError(f"--batch-size {size} needs about {need:.1f} GiB for its KV cache ({cache_len} positions a "
                          f"slot) and buffers, {free / 2**30:.1f} GiB is free on {device}: the largest batch size "
                          f"that fits is {fits}")


def _finished(problem_id: str, tally: RunTally, schedule: Sequence[float]) -> bool:
    """`stop_rule.problem_finished`, read from the tally (which holds each problem's pair once found)."""
    return problem_id in tally.by_id or len(tally.by_problem.get(problem_id, [])) >= len(schedule)

def run_attempt(
    model: LoadedModel, problem: Problem, prompt: EncodedPrompt, attempt: int, temperature: float,
    settings: MineSettings, sampler: Sampler = sample,
) -> RunRecord:
    """Decode, parse and score one attempt into its runs.jsonl record."""
    config = DecodeConfig(temperature, settings.top_p, settings.max_new_tokens)
    generation = sampler(model, prompt.token_ids, config, attempt_seed(problem.id, attempt))
    return attempt_record(model, problem, prompt, attempt, temperature, settings, generation)


def _loaded_revision(model: LoadedModel) -> str | None:
    """The revision of the model actually loaded (None for a model without one)."""
    return getattr(getattr(model, "info", None), "revision", None)


def loaded_model_name(model: LoadedModel, settings: MineSettings) -> str:
    """The model an attempt was decoded with: the requested one, or the one an out-of-memory fallback loaded."""
    info = getattr(model, "info", None)
    return str(info.name) if info is not None and info.fallback_from else settings.model


def attempt_record(
    model: LoadedModel, problem: Problem, prompt: EncodedPrompt, attempt: int, temperature: float,
    settings: MineSettings, generation: Generation, batch: BatchLayout | None = None,
) -> RunRecord:
    """Parse and score a decoded attempt into its runs.jsonl record."""
    trace = analyze_trace(model.tokenizer, generation.token_ids, problem.gold_answer, settings.strict_format,
                          cut=generation.finish_reason == "length")
    return RunRecord(
        id=problem.id,
        attempt=attempt,
        temperature=temperature,
        top_p=settings.top_p,
        seed=attempt_seed(problem.id, attempt),
        model=loaded_model_name(model, settings),
        prompt=prompt.text,
        token_ids=generation.token_ids,
        prompt_token_ids=prompt.token_ids,
        max_new_tokens=settings.max_new_tokens,
        finish_reason=generation.finish_reason,
        gold_answer=problem.gold_answer,
        chat_template_applied=prompt.chat_template_applied,
        model_revision=_loaded_revision(model),
        token_logprobs=[round(x, 6) for x in generation.token_logprobs],
        batch=None if batch is None else batch.to_json(),
        **trace.record_fields(),
    )


# Errors an attempt can raise that come from its own numbers and text (they recur on every replay), as opposed to
# the machine (CUDA, memory, disk), which stop the run instead.
DETERMINISTIC_ERRORS: tuple[type[BaseException], ...] = (ValueError, ArithmeticError, IndexError, KeyError,
                                                         RuntimeError)


def _is_device_error(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, MemoryError) or "cuda" in text or "out of memory" in text or "device" in text


def failed_attempt(
    problem: Problem, prompt: EncodedPrompt, attempt: int, temperature: float, settings: MineSettings,
    err: BaseException, model_revision: str | None, model_name: str | None = None,
) -> RunRecord:
    """The record of an attempt that failed deterministically: logged with its reason, never part of a pair, so
    the problem's next attempt follows and a resumed run does not die on it again."""
    return RunRecord(
        id=problem.id, attempt=attempt, temperature=temperature, top_p=settings.top_p,
        seed=attempt_seed(problem.id, attempt), model=model_name or settings.model, prompt=prompt.text, text="",
        final_answer=None, correct=False, parse_ok=False, token_ids=[], step_spans=[], final_answer_span=None,
        prompt_token_ids=prompt.token_ids, max_new_tokens=settings.max_new_tokens, finish_reason="error",
        gold_answer=problem.gold_answer, normalized_answer=None, score_rule="no_answer", strict_format_ok=False,
        chat_template_applied=prompt.chat_template_applied, model_revision=model_revision,
        error=f"{type(err).__name__}: {err}"[:500],
    )


def _record_session(outdir: Path, session: dict[str, Any], settings: MineSettings) -> None:
    """Write the manifest on the first call; later (resumed) calls append their session to it."""
    run = RunDirectory(outdir)
    if run.manifest_path.exists():
        manifest = run.manifest()
    else:
        manifest = RunManifest(settings=settings.to_json(), model=ModelIdentity.from_json(session.get("model")))
    replace(manifest, sessions=(*manifest.sessions, Session.from_json(session))).save(outdir)


def _check_runs_match(runs: Sequence[RunLine], problems: Sequence[Problem]) -> None:
    known = {p.id for p in problems}
    for line in runs:
        if line.record.id not in known:
            raise MiningError(f"runs.jsonl has attempts for {line.record.id!r}, which is not in the problems file")


