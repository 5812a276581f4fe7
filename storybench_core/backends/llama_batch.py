"""Generation on one llama.cpp context: one or several conversations decoded together.

Every local generation goes through `BatchDecoder`, a sequential `chat` being
a batch of one. A small model decoding one sequence is limited by memory
bandwidth (every token reads all the weights), so decoding the runs of a
sequence in one `llama_decode` call reads the weights once for all of them.

How it works (llama-cpp-python's low-level API, the one `Llama` wraps):

- `BatchDecoder` owns its own `llama_context` on the already loaded model
  (no second copy of the weights): `n_seq_max` KV sequences of `n_ctx`
  tokens each, one KV stream per sequence (`kv_unified=False`).
- Each conversation gets a *slot* (a KV sequence id) that remembers the
  tokens its cache holds; every step decodes one token of every generating
  sequence in one call, each sampled from its own row of logits with its own
  sampler chain and seed.

The reproducibility contract. llama.cpp's numbers for a position depend on
how that position was reached: evaluating a prompt in one call or as 38 + 1
tokens differs, and by how much differs from CPU to CPU (AVX2 and AVX-512
kernels disagree on different cases). So the cache is only ever used where
it is provably the same computation as a fresh one:

- A prompt is always evaluated as from an empty sequence, in chunks of
  PROMPT_CHUNK_TOKENS at fixed positions (0-63, 64-127, ...), one sequence
  per call.
- A cached prefix (the sequence's own, or another slot's, copied) is reused
  only in whole chunks that were evaluated exactly that way: same tokens,
  same chunk boundaries. Tokens generated one at a time are never reused for
  a later prompt; they are re-evaluated in its chunks.
- A prompt identical to the last one a slot evaluated (a second run of the
  same first prompt, a request repeated after a stop) reuses the whole cache
  *and the logits saved at the end of that evaluation*, so nothing is
  re-evaluated and nothing differs.
- Generation steps hold at most MAX_STEP_TOKENS tokens (see there).

So a response depends on the model file, the llama.cpp build and CPU
kernels, the thread count and flash-attention setting, its prompt tokens and
its sampling settings and seed — and on nothing else: not on the batch
width, other runs, what the cache held, a stop or a resume. `engine_info`
(llama.py) is stored with every response so the first list can be checked.

JSON schemas (the judge): the grammar is checked after sampling
(`_grammar_checked`), much faster than a check of the whole vocabulary
before each token.

The sampler chain and the stop handling copy `Llama.create_completion`
(top_k 40, typical_p 1, top_p, min_p 0.05, temperature, dist(seed); greedy
at temperature 0; an end-of-generation token ends a turn; the first stop
string cuts the text).

The context is created on first use and freed with the model (it registers
itself on the model's exit stack: llama.cpp wants contexts freed before
their model).
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import llama_cpp
import numpy as np

from ..errors import ModelError
from .base import BatchTokenCallback, Completion, GenerationSettings, Message
from .llama import GenerationMeter

if TYPE_CHECKING:
    from llama_cpp import Llama

    from .llama import LlamaBackend

log = logging.getLogger(__name__)

# Tokens per generation call. On CPU (llama-cpp-python 0.3.36, x86 AVX-512 build, measured on the
# bundled model) a decode call of 8 or more tokens runs matrix kernels that round differently
# from the 1-token calls of the sequential path, and batched texts stop matching sequential
# ones; 1 to 7 tokens match exactly. So 8 runs take two calls of 4 per step (still far fewer
# weight passes than 8).
MAX_STEP_TOKENS = 7

# Prompts are evaluated in chunks of this many tokens at fixed positions, so that a cached
# chunk is bitwise what a fresh evaluation computes (module docstring). 64-token chunks
# process prompts at 0.83x the speed of 512-token ones on the bundled model (AMD EPYC,
# AVX-512 build, 2 threads) and let a later turn reuse all but the last <64 prompt tokens.
PROMPT_CHUNK_TOKENS = 64

# Highest-scored tokens a rejected sample is re-checked among before the whole vocabulary.
GRAMMAR_SHORTLIST = 1024

# llama.cpp's llama_token_data: token id, logit, probability (12 bytes, no padding).
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])

# llama-cpp-python's create_completion defaults; copied so both paths sample alike.
TOP_K = 40
MIN_P = 0.05
TYPICAL_P = 1.0


def _balanced_parts(items: list[Any], most: int) -> list[list[Any]]:
    """items cut, in order, into the fewest parts of at most `most`, as equal as can be."""
    if not items:
        return []
    n_parts = -(-len(items) // most)
    size, extra = divmod(len(items), n_parts)
    parts, start = [], 0
    for k in range(n_parts):
        end = start + size + (1 if k < extra else 0)
        parts.append(items[start:end])
        start = end
    return parts


def _longest_common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _utf8_incomplete_tail(data: bytes | bytearray) -> int:
    """How many bytes at the end start a UTF-8 character that is not complete yet."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: look further back for the lead byte
            continue
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
        return back if need > back else 0
    return 0


@dataclass(frozen=True)
class BatchRequest:
    """One conversation's next turn, ready for the decoder."""

    prompt: list[int]  # the formatted conversation's tokens
    settings: GenerationSettings
    stops: tuple[str, ...] = ()
    grammar: tuple[str, str] | None = None  # (GBNF text, root rule) for a JSON schema


@dataclass
class _Slot:
    """One KV sequence of the batch context and what its cache holds.

    `canon`: the cache's first `canon` tokens are whole prompt chunks evaluated as from an
    empty sequence (reusable by any prompt that starts with them). `saved`: the last prompt
    this slot evaluated and the logits at its end, valid while the cache still starts with it.
    """

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    canon: int = 0
    saved: tuple[tuple[int, ...], np.ndarray] | None = None

    def reusable(self, prompt: Sequence[int]) -> tuple[int, bool]:
        """How many of prompt's tokens this cache can serve exactly, and whether with saved logits."""
        if self.saved is not None and len(self.saved[0]) == len(prompt) and self.saved[0] == tuple(prompt):
            return len(prompt), True
        n = min(_longest_common_prefix(self.tokens, prompt), self.canon, len(prompt) - 1)
        return max(n, 0) // PROMPT_CHUNK_TOKENS * PROMPT_CHUNK_TOKENS, False

    def keep_only(self, n: int) -> None:
        """Bookkeeping for a cache cut to its first n tokens."""
        del self.tokens[n:]
        self.canon = min(self.canon, n)
        if self.saved is not None and len(self.saved[0]) > n:
            self.saved = None

    def forget(self) -> None:
        self.tokens.clear()
        self.canon, self.saved = 0, None


@dataclass
class _Job:
    """One conversation being generated in a `BatchDecoder.generate` call."""

    index: int
    prompt: list[int]
    settings: GenerationSettings
    stops: list[bytes]
    max_tokens: int
    meter: GenerationMeter
    extra: dict[str, Any]
    slot: _Slot | None = None
    sampler: Any = None
    grammar: Any = None  # a JSON schema's grammar sampler, checked after sampling (see _sample)
    feed: list[int] = field(default_factory=list)  # tokens to evaluate next, in order
    logits: np.ndarray | None = None  # saved logits of the whole cached prompt (nothing to evaluate)
    completion: list[int] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    checked_bytes: int = 0  # raw is searched for stop strings up to here
    emitted_bytes: int = 0
    text: bytes | None = None  # final text once finished
    finish_reason: str = ""
    is_eog: bool = False
    result: Completion | None = None


class BatchDecoder:
    """A llama.cpp context for `n_seq` conversations of up to `n_ctx_seq` tokens each."""

    def __init__(self, llm: Llama, n_seq: int, n_ctx_seq: int) -> None:
        if n_seq < 1:
            raise ModelError(f"batch width {n_seq} must be at least 1")
        self._llm = llm
        self._vocab = llm._model.vocab
        # Copy the sequential context's settings (threads, flash attention, KV types, swa_full):
        # same kernels, same numbers. Only the size and the sequence count differ.
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_seq_max = n_seq
        params.n_ctx = n_ctx_seq * n_seq
        params.n_batch = max(int(params.n_batch), n_seq, PROMPT_CHUNK_TOKENS)
        params.n_ubatch = max(int(params.n_ubatch), n_seq, PROMPT_CHUNK_TOKENS)
        params.kv_unified = False  # one KV stream per sequence: attention cost per sequence stays its own
        # Gemma 3's sliding-window layers: without the full-size cache llama.cpp cannot trim a
        # sequence back to a common prefix and would re-evaluate the whole conversation each turn.
        params.swa_full = True
        ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        if ctx is None:
            raise ModelError(
                f"llama.cpp could not create a context for {n_seq} conversations of {n_ctx_seq} tokens "
                "(out of memory?) — lower generation.parallel_runs or generation.n_ctx"
            )
        self._ctx: Any = ctx
        self._memory = llama_cpp.llama_get_memory(ctx)
        self.n_seq = n_seq
        # llama.cpp may round the context up; clip generation as the sequential context would.
        self.n_ctx_seq = min(n_ctx_seq, int(llama_cpp.llama_n_ctx_seq(ctx)))
        self.n_batch = int(params.n_batch)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._slots = [_Slot(i) for i in range(n_seq)]
        self._piece_buf = ctypes.create_string_buffer(64)
        self._candidates: np.ndarray | None = None  # the whole vocabulary, for a grammar resample
        # Freed before the model: the model's exit stack runs this when Llama.close() runs.
        llm._model._exit_stack.callback(self.close)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def close(self) -> None:
        """Free the context and the batch. Idempotent."""
        if self._ctx is not None:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._ctx = None

    def clear(self) -> None:
        """Empty every sequence's cache (the next prompts are evaluated in full)."""
        if self._ctx is not None:
            llama_cpp.llama_memory_clear(self._memory, True)
        for slot in self._slots:
            slot.forget()

    def slot_tokens(self) -> list[list[int]]:
        """What each KV sequence holds (for tests and diagnostics)."""
        return [list(s.tokens) for s in self._slots]

    # -- one call: one turn of each conversation -----------------------------------

    def generate(
        self,
        requests: Sequence[BatchRequest],
        template: str,
        on_token: BatchTokenCallback | None = None,
        on_done: Callable[[int, Completion], None] | None = None,
        engine: dict[str, Any] | None = None,
    ) -> list[Completion]:
        """Generate the next turn of every request together; on_done fires as each finishes.

        `engine` (what the numbers depend on) goes into every Completion's extra["engine"],
        with the batch width added.

        A prompt that does not fit its sequence's context gets a Completion with
        finish_reason "error" (and extra["error"]); the others go on. StopRequested
        from on_token (or on_done) abandons the unfinished ones and propagates.
        """
        if self._ctx is None:
            raise ModelError("the batch decoder was closed with its model; load the model again")
        if len(requests) > self.n_seq:
            raise ModelError(f"{len(requests)} conversations for a batch of {self.n_seq} sequences")
        started = time.perf_counter()
        jobs: list[_Job] = []
        results: list[Completion | None] = [None] * len(requests)
        for i, request in enumerate(requests):
            job = self._new_job(i, request, started)
            if engine is not None:
                job.extra["engine"] = {**engine, "batch_width": len(requests)}
            if job.result is not None:
                results[i] = job.result
                if on_done is not None:
                    on_done(i, job.result)
            else:
                jobs.append(job)
        try:
            self._assign_slots(jobs)
            for job in jobs:
                job.sampler = self._make_sampler(job.settings)
                job.grammar = self._make_grammar(requests[job.index].grammar)
            self._run(jobs, template, results, on_token, on_done)
        finally:
            for job in jobs:
                for sampler in (job.sampler, job.grammar):
                    if sampler is not None:
                        llama_cpp.llama_sampler_free(sampler)
                job.sampler = job.grammar = None
        return [r for r in results if r is not None]

    def _new_job(self, index: int, request: BatchRequest, started: float) -> _Job:
        prompt, settings = request.prompt, request.settings
        meter = GenerationMeter(prompt_tokens=len(prompt), started_s=started)
        extra: dict[str, Any] = {}
        room = self.n_ctx_seq - len(prompt)
        # Same clipping as llama-cpp-python's create_completion, and said out loud.
        max_tokens = settings.max_tokens if settings.max_tokens < room else room
        if settings.max_tokens >= room:
            extra["max_tokens_clipped_to"] = room
        stops = [s.encode() for s in request.stops if s]
        job = _Job(index, list(prompt), settings, stops, max_tokens, meter, extra)
        if not prompt or room <= 0:
            message = (
                f"the prompt takes {len(prompt)} tokens but each batched conversation holds "
                f"{self.n_ctx_seq} — raise generation.n_ctx or shorten the conversation"
            )
            job.result = Completion("", "error", len(prompt), 0, 0.0, 0, extra={"error": message})
        return job

    def _assign_slots(self, jobs: list[_Job]) -> None:
        """Give each job the free slot whose cache serves most of its prompt, and cut that cache to it."""
        free = list(self._slots)
        # Best pairs first (an exact match before an equally long prefix); ties go to the earlier
        # job and the lower slot, and then to the slot holding the longest common prefix (kept warm).
        ranked = []
        for j in jobs:
            for n, s in enumerate(free):
                keep, exact = s.reusable(j.prompt)
                ranked.append((-keep, not exact, j.index, -_longest_common_prefix(s.tokens, j.prompt), n))
        by_index = {j.index: j for j in jobs}
        taken: set[int] = set()
        for neg_keep, inexact, index, _lcp, n in sorted(ranked):
            job = by_index[index]
            if job.slot is not None or n in taken:
                continue
            taken.add(n)
            job.slot = free[n]
            self._reuse(job, -neg_keep, not inexact)

    def _reuse(self, job: _Job, keep: int, exact: bool) -> None:
        """Cut the job's slot to the `keep` tokens it reuses; the rest of the prompt is to evaluate."""
        assert job.slot is not None
        slot = job.slot
        # Always cut, even when nothing is to be dropped: the cache must hold exactly slot.tokens.
        if not llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1):
            # Some caches (recurrent models) cannot drop a tail: start the sequence over.
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            keep, exact = 0, False
        slot.keep_only(keep)
        job.feed = job.prompt[keep:]
        job.logits = slot.saved[1] if exact and slot.saved is not None else None
        job.extra["prompt_cache"] = (
            "whole prompt and its logits" if job.logits is not None else f"{keep} tokens"
        )

    def _make_grammar(self, grammar: tuple[str, str] | None) -> Any:
        if grammar is None:
            return None
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar[0].encode(), grammar[1].encode())
        if not sampler:
            raise ModelError(
                "llama.cpp rejected the grammar built from the JSON schema — simplify the schema"
            )
        return sampler

    def _make_sampler(self, settings: GenerationSettings) -> Any:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if settings.temperature == 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            for sampler in (
                llama_cpp.llama_sampler_init_top_k(TOP_K),
                llama_cpp.llama_sampler_init_typical(TYPICAL_P, 1),
                llama_cpp.llama_sampler_init_top_p(settings.top_p, 1),
                llama_cpp.llama_sampler_init_min_p(MIN_P, 1),
                llama_cpp.llama_sampler_init_temp(settings.temperature),
                # The seed is a uint32 in llama.cpp.
                llama_cpp.llama_sampler_init_dist(settings.seed & 0xFFFFFFFF),
            ):
                llama_cpp.llama_sampler_chain_add(chain, sampler)
        return chain

    # -- the decode loop ----------------------------------------------------------------

    def _run(
        self,
        jobs: list[_Job],
        template: str,
        results: list[Completion | None],
        on_token: BatchTokenCallback | None,
        on_done: Callable[[int, Completion], None] | None,
    ) -> None:
        """Prompts one sequence at a time, then one token of every sequence per decode call."""
        active: list[_Job] = []

        def sampled(job: _Job, row: int | np.ndarray) -> None:
            if self._sample(job, row, on_token):
                results[job.index] = job.result = self._finish(job, template, on_token)
                if on_done is not None:
                    on_done(job.index, job.result)
            else:
                active.append(job)

        # Prompts, one sequence at a time, in request order; a job may first copy a better
        # exact prefix from another slot (a second run of the same first prompt copies the first's).
        for job in sorted(jobs, key=lambda j: j.index):
            self._take_prefix(job)
            if job.logits is not None:
                job.meter.on_eval(0)
                sampled(job, job.logits)
            else:
                sampled(job, self._prefill(job))

        # Generation: one token per sequence per call, in seq id order, at most
        # MAX_STEP_TOKENS tokens per llama_decode call (more switch kernels, see there).
        while active:
            active.sort(key=lambda j: j.slot.seq_id if j.slot else 0)
            fillers = self._fill_gaps(active)
            entries: list[_Job | _Slot] = []
            for job in active:
                assert job.slot is not None
                entries.extend(fillers.get(job.slot.seq_id, ()))
                entries.append(job)
            active = []
            for part in _balanced_parts(entries, MAX_STEP_TOKENS):
                while part and isinstance(part[-1], _Slot):  # a placeholder at the edge bridges nothing
                    part.pop()
                while part and isinstance(part[0], _Slot):
                    part.pop(0)
                self._step(part, sampled)

    def _step(self, part: list[_Job | _Slot], sampled: Callable[[_Job, int], None]) -> None:
        """Decode one token of each job in part (placeholders in idle slots between them)."""
        jobs = [e for e in part if isinstance(e, _Job)]
        rows: dict[int, int] = {}  # job index → batch row of its logits
        for n, entry in enumerate(part):
            if isinstance(entry, _Slot):
                self._put(n, entry.tokens[-1] if entry.tokens else 0, len(entry.tokens), entry.seq_id, False)
            else:
                assert entry.slot is not None
                self._put(n, entry.feed[0], len(entry.slot.tokens), entry.slot.seq_id, True)
                rows[entry.index] = n
        self._batch.n_tokens = len(part)
        self._decode(jobs)
        for entry in part:
            if isinstance(entry, _Slot):  # drop the placeholder: the cache holds exactly entry.tokens
                llama_cpp.llama_memory_seq_rm(self._memory, entry.seq_id, len(entry.tokens), -1)
        for job in jobs:  # the cache holds every one of them now, whatever sampling raises
            assert job.slot is not None
            job.slot.tokens.append(job.feed.pop())
        for job in jobs:
            sampled(job, rows[job.index])

    def _fill_gaps(self, active: list[_Job]) -> dict[int, list[_Slot]]:
        """Idle slots between active ones, by the active seq id they precede.

        With one KV stream per sequence, llama.cpp puts only consecutive seq ids in one
        ubatch: generating in slots 0 and 2 would cost two passes over the weights. A
        placeholder token in slot 1 (decoded, then removed; it changes nobody's numbers)
        costs far less on a memory-bound CPU.
        """
        ids = {j.slot.seq_id for j in active if j.slot is not None}
        fillers: dict[int, list[_Slot]] = {}
        waiting: list[_Slot] = []
        for slot in self._slots[min(ids) : max(ids) + 1]:
            if slot.seq_id in ids:
                if waiting:
                    fillers[slot.seq_id] = waiting
                waiting = []
            elif len(slot.tokens) < self.n_ctx_seq:
                waiting.append(slot)
            else:
                waiting = []  # no room for a placeholder: this gap stays (two passes, still correct)
        return fillers

    def _put(self, n: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        batch = self._batch
        batch.token[n] = token
        batch.pos[n] = pos
        batch.n_seq_id[n] = 1
        batch.seq_id[n][0] = seq_id
        batch.logits[n] = 1 if logits else 0

    def _prefill(self, job: _Job) -> int:
        """Decode a job's prompt suffix alone, in chunks at fixed positions; the batch row of its logits.

        The suffix starts at a chunk boundary (`_Slot.reusable` keeps whole chunks only), so the
        chunks are those a fresh evaluation of the whole prompt would decode.
        """
        assert job.slot is not None
        slot = job.slot
        job.meter.on_eval(len(job.feed))
        feed, job.feed = job.feed, []
        batch = self._batch
        chunk: list[int] = []
        for start in range(0, len(feed), PROMPT_CHUNK_TOKENS):
            chunk = feed[start : start + PROMPT_CHUNK_TOKENS]
            pos0 = len(slot.tokens)
            for k, token in enumerate(chunk):
                batch.token[k] = token
                batch.pos[k] = pos0 + k
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = slot.seq_id
                batch.logits[k] = 0
            batch.logits[len(chunk) - 1] = 1
            batch.n_tokens = len(chunk)
            self._decode([job])
            slot.tokens.extend(chunk)
            if len(chunk) == PROMPT_CHUNK_TOKENS:
                slot.canon = len(slot.tokens)
        row = len(chunk) - 1
        # Kept so that the same prompt again (another run, a retry after a stop) needs no decode.
        slot.saved = (tuple(job.prompt), self._logits_row(row).copy())
        return row

    def _logits_row(self, row: int) -> np.ndarray:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, row), shape=(self.n_vocab,))

    def _take_prefix(self, target: _Job) -> None:
        """Copy another slot's cache into target's sequence when it serves more of target's prompt.

        Between two KV streams llama.cpp copies only whole sequences (p0 = p1 = -1), at the
        next decode, in order; the bookkeeping changes at once, so the tail is dropped now.
        The copied values are bitwise the source's, and only exact chunks are kept.
        """
        assert target.slot is not None
        own = len(target.prompt) - len(target.feed) + (1 if target.logits is not None else 0)
        best: tuple[int, bool, _Slot] | None = None
        for slot in self._slots:
            if slot is target.slot or not slot.tokens:
                continue
            keep, exact = slot.reusable(target.prompt)
            score = keep + (1 if exact else 0)
            if score > own and (best is None or score > best[0] + (1 if best[1] else 0)):
                best = (keep, exact, slot)
        if best is None:
            return
        keep, exact, source = best
        llama_cpp.llama_memory_seq_rm(self._memory, target.slot.seq_id, -1, -1)
        llama_cpp.llama_memory_seq_cp(self._memory, source.seq_id, target.slot.seq_id, -1, -1)
        llama_cpp.llama_memory_seq_rm(self._memory, target.slot.seq_id, keep, -1)
        slot = target.slot
        slot.tokens, slot.canon, slot.saved = list(source.tokens), source.canon, source.saved
        slot.keep_only(keep)
        target.feed = target.prompt[keep:]
        target.logits = slot.saved[1] if exact and slot.saved is not None else None
        target.extra["prompt_tokens_copied"] = keep
        target.extra["prompt_cache"] = (
            "whole prompt and its logits, copied" if target.logits is not None else f"{keep} tokens, copied"
        )

    def _decode(self, jobs: list[_Job]) -> None:
        status = llama_cpp.llama_decode(self._ctx, self._batch)
        if status != 0:
            self._forget(jobs)
            raise ModelError(
                f"llama_decode failed with status {status} for a batch of {self._batch.n_tokens} tokens "
                "(out of memory or KV cache full) — lower generation.parallel_runs or generation.n_ctx"
            )

    def _sample(self, job: _Job, row: int | np.ndarray, on_token: BatchTokenCallback | None) -> bool:
        """Sample the job's next token from a logits row (or saved logits); True when it is finished."""
        if isinstance(row, np.ndarray):
            logits = row
            # What llama_sampler_sample does with a context's row: every token, the chain, accept.
            cand = self._all_candidates(logits)
            token = self._apply(job.sampler, cand)
            llama_cpp.llama_sampler_accept(job.sampler, token)
        else:
            token = llama_cpp.llama_sampler_sample(job.sampler, self._ctx, row)
            logits = None
        if job.grammar is not None:
            token = self._grammar_checked(job, self._logits_row(row) if logits is None else logits, token)
        job.meter.on_sample(token)
        if self._accept(job, token, on_token):
            return True
        job.feed = [token]
        return False

    def _grammar_checked(self, job: _Job, logits: np.ndarray, token: int) -> int:
        """The sampled token if the grammar allows it, else one sampled among the allowed ones.

        Checking a grammar against every token of the vocabulary at every step (262k
        for Gemma 3) is what makes constrained generation slow; a model that follows
        the format mostly picks an allowed token anyway. So the token is sampled
        first and checked alone; only when the grammar rejects it are the logits
        filtered by the grammar and sampled again (as llama.cpp's own tools do).
        """
        one = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
        single = llama_cpp.llama_token_data_array(one, 1, -1, False)
        llama_cpp.llama_sampler_apply(job.grammar, ctypes.byref(single))
        if one[0].logit == float("-inf"):
            token = self._resample_with_grammar(job, logits)
            if token < 0:
                raise ModelError("the grammar allows no token here — the JSON schema cannot be completed")
        if not llama_cpp.llama_vocab_is_eog(self._vocab, token):  # an end token ends the job instead
            llama_cpp.llama_sampler_accept(job.grammar, token)
        return token

    def _resample_with_grammar(self, job: _Job, logits: np.ndarray) -> int:
        """Sample among the tokens the grammar allows: from the best-scored ones when that is exact.

        The sampler chain keeps at most TOP_K tokens (1 when greedy), the highest-scored
        allowed ones. If the GRAMMAR_SHORTLIST highest-scored tokens already hold that many
        allowed tokens, no token outside them could be chosen, so the grammar is checked
        on the shortlist only; otherwise on the whole vocabulary.
        """
        n_vocab = self.n_vocab
        need = 1 if job.settings.temperature == 0 else TOP_K
        if n_vocab > GRAMMAR_SHORTLIST:
            ids = np.argpartition(logits, -GRAMMAR_SHORTLIST)[-GRAMMAR_SHORTLIST:]
            short = np.zeros(GRAMMAR_SHORTLIST, dtype=_TOKEN_DATA)
            short["id"], short["logit"] = ids, logits[ids]
            self._apply(job.grammar, short)
            allowed = short[np.isfinite(short["logit"])]
            if len(allowed) >= need:
                return self._apply(job.sampler, np.ascontiguousarray(allowed))
        cand = self._all_candidates(logits)
        self._apply(job.grammar, cand)
        return self._apply(job.sampler, cand)

    def _all_candidates(self, logits: np.ndarray) -> np.ndarray:
        """The whole vocabulary as a llama_token_data array, in token order (reused buffer)."""
        if self._candidates is None or len(self._candidates) != self.n_vocab:
            self._candidates = np.zeros(self.n_vocab, dtype=_TOKEN_DATA)
        cand = self._candidates
        # All three columns, every time: the samplers sort the array in place.
        cand["id"], cand["logit"], cand["p"] = np.arange(self.n_vocab, dtype=np.int32), logits, 0.0
        return cand

    @staticmethod
    def _apply(sampler: Any, candidates: np.ndarray) -> int:
        """Run a sampler on a llama_token_data array in place; the selected token, or -1."""
        array = llama_cpp.llama_token_data_array(
            candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)), len(candidates), -1, False
        )
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
        if array.selected < 0:
            return -1
        # Samplers may reorder the array (it stays in place): read the id there.
        return int(array.data[array.selected].id)

    def _accept(self, job: _Job, token: int, on_token: BatchTokenCallback | None) -> bool:
        """Take a sampled token; True when the job is finished (EOG, stop string, max tokens)."""
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            job.is_eog, job.finish_reason = True, "stop"
            return True
        job.completion.append(token)
        n = llama_cpp.llama_token_to_piece(
            self._vocab, token, self._piece_buf, len(self._piece_buf), 0, False
        )
        if n < 0:  # piece longer than the buffer: grow it and ask again
            self._piece_buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buf, -n, 0, False)
        job.raw += self._piece_buf.raw[:n]
        # Like create_completion: look for stop strings only once the UTF-8 tail is complete.
        if job.stops and not _utf8_incomplete_tail(job.raw):
            for stop in job.stops:
                start = max(0, job.checked_bytes - len(stop) + 1)
                at = job.raw.find(stop, start)
                if at >= 0:
                    job.text, job.finish_reason = bytes(job.raw[:at]), "stop"
                    return True
            job.checked_bytes = len(job.raw)
        if len(job.completion) >= job.max_tokens:
            job.finish_reason = "length"
            return True
        if on_token is not None:
            self._stream(job, on_token, final=False)
        return False

    def _stream(self, job: _Job, on_token: BatchTokenCallback, *, final: bool) -> None:
        """Send the text that can no longer turn out to be a stop string or half a character."""
        data = job.text if final and job.text is not None else bytes(job.raw)
        end = len(data)
        if not final:
            end -= _utf8_incomplete_tail(data)
            held = 0
            for stop in job.stops:
                for k in range(min(len(stop) - 1, end), 0, -1):
                    if data[:end].endswith(stop[:k]):
                        held = max(held, k)
                        break
            end -= held
        if end > job.emitted_bytes:
            piece = data[job.emitted_bytes : end].decode("utf-8", errors="ignore")
            job.emitted_bytes = end
            if piece:
                on_token(job.index, piece)

    def _finish(self, job: _Job, template: str, on_token: BatchTokenCallback | None) -> Completion:
        if job.text is None:
            job.text = bytes(job.raw)
        if on_token is not None:
            self._stream(job, on_token, final=True)
        text = job.text.decode("utf-8", errors="ignore")
        return job.meter.finish(text, job.finish_reason, template, is_eog=job.is_eog, extra=job.extra)

    def _forget(self, jobs: list[_Job]) -> None:
        """After a failed decode the cache contents are uncertain: empty those sequences."""
        for job in jobs:
            if job.slot is not None:
                llama_cpp.llama_memory_seq_rm(self._memory, job.slot.seq_id, -1, -1)
                job.slot.forget()


# --- the backend side -----------------------------------------------------------------


def decoder_for(backend: LlamaBackend, width: int) -> BatchDecoder:
    """The backend's batch decoder, (re)created when it has fewer sequences than `width`."""
    decoder: BatchDecoder | None = getattr(backend, "_batch_decoder", None)
    if decoder is not None and not decoder.closed and decoder.n_seq >= width:
        return decoder
    if decoder is not None:
        decoder.close()
    llm = backend._loaded()
    decoder = BatchDecoder(llm, width, backend.context_size())
    backend._batch_decoder = decoder  # type: ignore[attr-defined]
    log.info("%s: batch context for %d conversations of %d tokens", backend.name, width, decoder.n_ctx_seq)
    return decoder


def chat_batch(
    backend: LlamaBackend,
    conversations: Sequence[Sequence[Message]],
    settings: Sequence[GenerationSettings],
    on_token: BatchTokenCallback | None = None,
    on_done: Callable[[int, Completion], None] | None = None,
) -> list[Completion]:
    """`BatchModelBackend.chat_batch` for a loaded GGUF model (see the module docstring)."""
    if len(conversations) != len(settings):
        raise ModelError(f"{len(conversations)} conversations but {len(settings)} generation settings")
    if not conversations:
        return []
    template = backend.template
    requests = []
    for messages, s in zip(conversations, settings, strict=True):
        grammar = None
        if s.json_schema is not None:
            built = backend._grammar_for(s.json_schema)
            grammar = (built._grammar, built._root)
        requests.append(
            BatchRequest(
                prompt=backend.tokenize_prompt(messages),
                settings=s,
                stops=(*template.stop, *s.stop),
                grammar=grammar,
            )
        )
    decoder = decoder_for(backend, len(requests))
    return decoder.generate(requests, template.name, on_token, on_done, engine=backend.engine_info)
