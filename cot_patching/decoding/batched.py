"""Batched decoding: N attempts per forward in fixed slots, each replayable alone in its slot (`mine --batch-size`).

A group of up to N attempts is decoded in lockstep over one static KV cache of N slots. Prompts are left-padded to
the group's width W, so every slot writes the same cache position at every step and the batch keeps one shape from
the first step to the last. Nothing in a forward mixes rows (matmuls, norms and attention are computed row by row at
a shape that depends only on N, W and the cache length), and each attempt draws from its own generator, so an
attempt's tokens depend only on its own prompt, seed, slot, W, N and the cache length, never on what the other
slots hold. That is what a record keeps (`BatchLayout`); `replay.decode_in_slots` decodes it again in the same slot
of an otherwise idle batch of the same shape.

Sampling is SPEC §4 for every row (logits / T, the top-p nucleus keeping the top token, one draw from the attempt's
own `torch.Generator` seeded with its logged seed); softmax, sort and cumsum run over the [N, vocab] block at once
(row-wise, so the same row gives the same bits whatever the other rows hold), which is why batched records carry
`sampler: "rows-v1"` and replay only in a batch of their recorded shape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from cot_patching.decoding.cuda_graphs import capture_graph
from cot_patching.decoding.hf_cache import cache_keyword
from cot_patching.decoding.sampling import CACHE_BUCKET, STOP_CHECK_INTERVAL, DecodeConfig, Generation

BATCH_SAMPLER = "rows-v1"
# How the step runs (eager, a captured CUDA graph, of the torch.compile'd model) and on which modules: the bridge's
# own (no prefix), Hugging Face's plain modules over the same tensors ("plain_", `decoding.plain`), or those with
# grouped-query attention that never repeats the K/V cache ("grouped_", `decoding.plain.grouped_attention`).
STEP_KINDS = ("eager", "cuda_graph", "cuda_graph_compiled")
MODULE_PREFIXES = {"bridge": "", "plain": "plain_", "grouped": "grouped_"}
BATCH_PATHS = tuple(prefix + step for prefix in MODULE_PREFIXES.values() for step in STEP_KINDS)
DEFAULT_BATCH_PATH = {"cuda": "grouped_cuda_graph", "cpu": "grouped_eager"}


def path_modules(path: str) -> str:
    """Which modules a batch decode path runs: "bridge", "plain" or "grouped"."""
    return next((name for name, prefix in MODULE_PREFIXES.items() if prefix and path.startswith(prefix)), "bridge")


@dataclass(frozen=True)
class BatchLayout:
    """Where and in what batch shape an attempt was decoded: what a replay needs besides the attempt's own fields."""

    size: int  # N, the slots of the batch
    slot: int  # this attempt's row
    width: int  # W, the left-padded prompt width of its group
    cache_len: int  # static KV cache positions per slot
    path: str  # one of BATCH_PATHS
    group: int  # the group's sequence number in its run
    rows: int  # attempts decoded in the group (the other slots idle)
    sampler: str = BATCH_SAMPLER
    shard: str | None = None  # "K/N" when a shard mined it: groups are numbered per shard, and a merge keeps them

    def __post_init__(self) -> None:
        for name in ("size", "width", "cache_len", "rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"batch {name} must be an integer >= 1, got {value!r}")
        if isinstance(self.slot, bool) or not isinstance(self.slot, int) or not 0 <= self.slot < self.size:
            raise ValueError(f"batch slot must be in 0..{self.size - 1}, got {self.slot!r}")
        if self.rows > self.size:
            raise ValueError(f"a batch of {self.size} slots cannot hold {self.rows} attempts")
        if self.path not in BATCH_PATHS:
            raise ValueError(f"unknown batch decode path {self.path!r}; known: {', '.join(BATCH_PATHS)}")
        if self.sampler != BATCH_SAMPLER:
            raise ValueError(f"batch sampler {self.sampler!r} is not one this version replays ({BATCH_SAMPLER})")
        if isinstance(self.group, bool) or not isinstance(self.group, int) or self.group < 0:
            raise ValueError(f"batch group must be an integer >= 0, got {self.group!r}")
        if self.shard is not None and not isinstance(self.shard, str):
            raise ValueError(f"batch shard must be 'K/N' or absent, got {self.shard!r}")

    @property
    def group_key(self) -> tuple[str | None, int]:
        """What identifies the group in a run directory, merged ones included: (shard, group)."""
        return self.shard, self.group

    def to_json(self) -> dict[str, Any]:
        """The layout as stored in a runs.jsonl record's `batch` field (`shard` only where there is one)."""
        data = asdict(self)
        if data["shard"] is None:
            del data["shard"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchLayout:
        """A layout from a record's `batch` field; a field missing or of the wrong kind is a ValueError."""
        try:
            return cls(**data)
        except TypeError as err:
            raise ValueError(f"batch field {data!r} is not a batch layout: {err}") from None


@dataclass(frozen=True)
class BatchRow:
    """One attempt to decode in a batch: its prompt ids, decode config and seed."""

    prompt_ids: Sequence[int]
    config: DecodeConfig
    seed: int


def cache_len_for(width: int, max_new_tokens: int) -> int:
    """The static cache length for a group: room for the prompt and every new token, rounded up to a bucket."""
    return -(-(width + max_new_tokens) // CACHE_BUCKET) * CACHE_BUCKET


def slot_bytes(hf_model: Any, cache_len: int, width: int) -> int:
    """Device memory one slot needs beyond the weights (an upper estimate): its KV cache, its share of the prefill's
    activations and mask, its sampling buffers."""
    cfg = hf_model.config.get_text_config() if hasattr(hf_model.config, "get_text_config") else hf_model.config
    element = next(hf_model.parameters()).element_size()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    kv_cache = 2 * cfg.num_hidden_layers * kv_heads * head_dim * cache_len * element
    prefill = width * (4 * cfg.hidden_size + 3 * cfg.intermediate_size + cache_len) * element
    sampling = cfg.vocab_size * (6 * 4 + 2 * 8)  # fp32 logits, probs, sorted, cumsum, nucleus, log-probs; int64 ids
    return kv_cache + prefill + sampling


def largest_batch_size(hf_model: Any, cache_len: int, width: int, free_bytes: int) -> int:
    """The most slots that fit in `free_bytes` (keeping a tenth free for the allocator)."""
    return int(0.9 * free_bytes) // slot_bytes(hf_model, cache_len, width)


class BatchedDecoder:
    """N slots over one static KV cache: prefill left-padded prompts, then one token per slot per `step`.

    On CUDA with `graphed`, the one-token step is captured once as a CUDA graph (optionally of the torch.compile'd
    model) and replayed; on any device without it, the same forward runs eagerly.
    """

    def __init__(self, hf_model: Any, size: int, cache_len: int, graphed: bool = False,
                 compile_step: bool = False, modules: str = "bridge") -> None:
        from transformers import StaticCache

        if modules not in MODULE_PREFIXES:
            raise ValueError(f"unknown decode modules {modules!r}; known: {', '.join(MODULE_PREFIXES)}")
        self.hf_model, self.size, self.cache_len, self.graphed = hf_model, size, cache_len, graphed
        self.modules = modules  # which modules `hf_model` is (recorded in the path)
        self.step_model = torch.compile(hf_model, dynamic=False) if graphed and compile_step else hf_model
        parameter = next(hf_model.parameters())
        device, dtype = parameter.device, parameter.dtype
        self.cache = StaticCache(config=hf_model.config, max_cache_len=cache_len)
        self.cache_keyword = cache_keyword(hf_model)
        self.input_ids = torch.zeros((size, 1), dtype=torch.long, device=device)
        self.pads = torch.zeros((size,), dtype=torch.long, device=device)
        self.position = torch.zeros((1,), dtype=torch.long, device=device)
        self.key_positions = torch.arange(cache_len, device=device)
        self.visible = torch.zeros((), dtype=dtype, device=device)
        self.hidden = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=device)
        self.width = self.next_position = 0
        self.prompts: list[list[int] | None] = []
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: Tensor | None = None
        self._refill: Callable[[], Tensor] = lambda: self.prefill([None] * size, 1)

    @property
    def path(self) -> str:
        """The decode path recorded for attempts decoded here."""
        step = "eager" if not self.graphed else (
            "cuda_graph_compiled" if self.step_model is not self.hf_model else "cuda_graph")
        return MODULE_PREFIXES[self.modules] + step

    def _forward(self, input_ids: Int[Tensor, "n q"], cache_position: Int[Tensor, " q"]) -> Float[Tensor, "n vocab"]:
        keys = self.key_positions[None, None, :]
        queries = cache_position[None, :, None]
        allowed = (keys <= queries) & (keys >= self.pads[:, None, None])
        # A padding position's query sees only itself: a row of nothing but masked keys would softmax to NaN.
        allowed = allowed | (keys == queries)
        mask = torch.where(allowed, self.visible, self.hidden)[:, None]
        positions = (cache_position[None, :] - self.pads[:, None]).clamp(min=0)
        model = self.step_model if input_ids.shape[1] == 1 else self.hf_model
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                    **{self.cache_keyword: self.cache},
                    cache_position=cache_position, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    def prefill(self, prompts: Sequence[Sequence[int] | None], width: int) -> Float[Tensor, "n vocab"]:
        """Reset the cache and run the prompts left-padded to `width` (None: an idle slot); next-token logits."""
        if len(prompts) != self.size:
            raise ValueError(f"a batch of {self.size} slots got {len(prompts)} prompts")
        longest = max((len(p) for p in prompts if p is not None), default=0)
        if longest > width:
            raise ValueError(f"a prompt of {longest} tokens does not fit the batch width {width}")
        if width + 1 > self.cache_len:
            raise ValueError(f"a batch width of {width} does not fit a cache of {self.cache_len}")
        self.cache.reset()
        self.width = self.next_position = width
        self.prompts = [None if p is None else list(p) for p in prompts]
        rows = [[0] * width if p is None else [0] * (width - len(p)) + list(p) for p in self.prompts]
        pads = [width if p is None else width - len(p) for p in self.prompts]
        self.pads.copy_(torch.tensor(pads, dtype=torch.long))
        ids = torch.tensor(rows, dtype=torch.long, device=self.input_ids.device)
        self._refill = lambda: self.prefill(prompts, width)
        return self._forward(ids, self.key_positions[:width])

    def prefill_forked(self, prompts: Sequence[Sequence[int] | None], width: int,
                       single: BatchedDecoder) -> Float[Tensor, "n vocab"]:
        """`prefill`, with each distinct prompt run once in the one-slot decoder `single` (same cache length) and its
        KV cache copied into every slot that holds it: rollouts of one prefix share its prefill."""
        if len(prompts) != self.size:
            raise ValueError(f"a batch of {self.size} slots got {len(prompts)} prompts")
        if single.size != 1 or single.cache_len != self.cache_len:
            raise ValueError("the forking decoder must have one slot and the batch's cache length")
        if any(getattr(layer, "keys", None) is None for layer in self._layers()):
            self.prefill([None] * self.size, width)  # the static cache allocates its tensors on first use
        self.prompts = [None if p is None else list(p) for p in prompts]
        self.pads.copy_(torch.tensor([width if p is None else width - len(p) for p in self.prompts]))
        self.cache.reset()
        logits: Tensor | None = None
        for prompt in dict.fromkeys(tuple(p) for p in self.prompts if p is not None):
            prompt_logits = single.prefill([prompt], width)
            slots = torch.tensor([r for r, p in enumerate(self.prompts) if p is not None and tuple(p) == prompt],
                                 dtype=torch.long, device=self.input_ids.device)
            for many, one in zip(self._layers(), single._layers()):
                many.keys.index_copy_(0, slots, one.keys.expand(len(slots), -1, -1, -1))
                many.values.index_copy_(0, slots, one.values.expand(len(slots), -1, -1, -1))
            if logits is None:
                logits = torch.zeros((self.size, prompt_logits.shape[-1]), dtype=prompt_logits.dtype,
                                     device=prompt_logits.device)
            logits.index_copy_(0, slots, prompt_logits.expand(len(slots), -1))
        for many, one in zip(self._layers(), single._layers()):
            counter = getattr(one, "cumulative_length", None)  # transformers >= 5.24 counts positions in the layer
            if isinstance(counter, Tensor):
                many.cumulative_length.copy_(counter)
        if logits is None:
            raise ValueError("a forked prefill needs at least one prompt")
        self.width = self.next_position = width
        self._refill = lambda: self.prefill_forked(prompts, width, single)
        return logits

    def _layers(self) -> list[Any]:
        return list(self.cache.layers)

    def step(self, tokens: Int[Tensor, " n"]) -> Float[Tensor, "n vocab"]:
        """Feed one token per slot at the next cache position; the next-token logits of every slot."""
        if self.next_position >= self.cache_len:
            raise ValueError(f"position {self.next_position} is past the static cache of {self.cache_len}")
        self.input_ids.copy_(tokens.view(self.size, 1))
        self.position.fill_(self.next_position)
        self.next_position += 1
        if not self.graphed:
            return self._forward(self.input_ids, self.position)
        if self.graph is None:
            self._capture()
        assert self.graph is not None and self.logits is not None
        self.graph.replay()
        return self.logits

    def _capture(self) -> None:
        if self.next_position != self.width + 1:
            raise RuntimeError("the decode graph must be captured at the first step after a prefill")
        self.graph, self.logits = capture_graph(lambda: self._forward(self.input_ids, self.position))
        # The warm-up and capture forwards ran the cache's bookkeeping; rebuild the group's state from its prompts
        # so that the first group of a process starts its first step exactly like every later group.
        self._refill()
        self.next_position = self.width + 1


class RowSampling:
    """Each row's sampling settings as device tensors, made once per group so that a step copies nothing from the
    host (a host-to-device copy would make the host wait for the GPU at every step)."""

    def __init__(self, temperatures: Sequence[float], top_p: Sequence[float],
                 generators: Sequence[torch.Generator | None], device: torch.device) -> None:
        self.generators = list(generators)
        self.sampled = [r for r, (t, g) in enumerate(zip(temperatures, generators)) if t != 0 and g is not None]
        self.sampled_rows = torch.tensor(self.sampled, dtype=torch.long, device=device)
        self.temperatures = torch.tensor([[t if t != 0 else 1.0] for t in temperatures], dtype=torch.float32,
                                         device=device)
        self.top_p = torch.tensor([[p] for p in top_p], dtype=torch.float32, device=device)


def choose_next_tokens(logits: Float[Tensor, "n vocab"], rows: RowSampling) -> Int[Tensor, " n"]:
    """Per row: argmax at T=0, else one draw from the row's own generator from the top-p nucleus of softmax(l / T);
    rows with no generator (idle slots) take the argmax.

    The draw is `torch.multinomial(nucleus, 1, generator)` computed the way PyTorch computes it for one sample
    (q ~ Exp(1) from the generator over the whole row, then argmax(nucleus / q)), without its two host round trips
    (validity checks read back to the host), so a row draws exactly what the batch-1 sampler's multinomial draws
    from the same nucleus.
    """
    greedy = torch.argmax(logits, dim=-1)
    if not rows.sampled:
        return greedy
    probs = torch.softmax(logits.float() / rows.temperatures, dim=-1)
    sorted_probs, sorted_ids = torch.sort(probs, dim=-1, descending=True, stable=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    nucleus = torch.where(mass_before < rows.top_p, sorted_probs, torch.zeros_like(sorted_probs))
    nucleus = nucleus[rows.sampled_rows]
    exponential = torch.empty_like(nucleus)
    for index, row in enumerate(rows.sampled):
        exponential[index].exponential_(1, generator=rows.generators[row])
    choices = torch.argmax(nucleus / exponential, dim=-1)
    tokens = greedy.clone()
    tokens[rows.sampled_rows] = sorted_ids[rows.sampled_rows, choices]
    return tokens


@torch.inference_mode()
def sample_batch(
    decoder: BatchedDecoder, rows: Sequence[BatchRow | None], stop_token_ids: frozenset[int],
    width: int | None = None, stop_check_interval: int | None = None, fork_from: BatchedDecoder | None = None,
) -> list[Generation | None]:
    """Decode each attempt of `rows` in its slot (None: an idle slot) until every one has stopped (`fork_from`: a
    one-slot decoder that prefills each distinct prompt once, `BatchedDecoder.prefill_forked`)."""
    if len(rows) != decoder.size:
        raise ValueError(f"a batch of {decoder.size} slots got {len(rows)} rows")
    live = [r for r, row in enumerate(rows) if row is not None]
    if not live:
        return [None] * decoder.size
    max_new = max(rows[r].config.max_new_tokens for r in live)  # type: ignore[union-attr]
    width = width if width is not None else max(len(rows[r].prompt_ids) for r in live)  # type: ignore[union-attr]
    device = decoder.input_ids.device
    generators: list[torch.Generator | None] = [None] * decoder.size
    for r in live:
        generators[r] = torch.Generator(device=device)
        generators[r].manual_seed(rows[r].seed)  # type: ignore[union-attr]
    sampling = RowSampling([0.0 if row is None else row.config.temperature for row in rows],
                           [1.0 if row is None else row.config.top_p for row in rows], generators, device)
    limits = [0 if row is None else row.config.max_new_tokens for row in rows]
    prompts = [None if row is None else row.prompt_ids for row in rows]
    logits = decoder.prefill(prompts, width) if fork_from is None else decoder.prefill_forked(prompts, width,
                                                                                              fork_from)
    check_every = stop_check_interval or (STOP_CHECK_INTERVAL if device.type == "cuda" else 1)
    new_tokens = torch.zeros((max_new, decoder.size), dtype=torch.long, device=device)
    new_logprobs = torch.zeros((max_new, decoder.size), dtype=torch.float32, device=device)
    host_tokens: list[list[int]] = []  # [step][slot], read back every `check_every` steps
    results: list[Generation | None] = [None] * decoder.size
    pending = set(live)
    for index in range(max_new):
        tokens = choose_next_tokens(logits, sampling)
        new_tokens[index] = tokens
        new_logprobs[index] = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, None])[:, 0]
        last = index + 1 == max_new
        if last or (index + 1) % check_every == 0:
            checked = len(host_tokens)
            host_tokens += new_tokens[checked: index + 1].tolist()
            for r in sorted(pending):
                seen = min(len(host_tokens), limits[r])
                stop_at = next((i for i in range(checked, seen) if host_tokens[i][r] in stop_token_ids), None)
                if stop_at is None and seen < limits[r]:
                    continue
                end = seen if stop_at is None else stop_at + 1
                results[r] = Generation([step[r] for step in host_tokens[:end]],
                                        "length" if stop_at is None else "stop", new_logprobs[:end, r].tolist())
                pending.discard(r)
            if not pending:
                break
        if not last:
            logits = decoder.step(tokens)
    return results
