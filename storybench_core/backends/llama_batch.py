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

The reproducibility contract (the cache is only ever used where it is
provably the same computation as a fresh one) is kept by the slots:
llama_slots.py. Sampling (the chain of
`Llama.create_completion`, and JSON-schema grammars checked after sampling,
much faster than a check of the whole vocabulary before each token):
llama_sampling.py. The stop handling copies `Llama.create_completion` too:
an end-of-generation token ends a turn, the first stop string cuts the text.

`LlamaBackend.chat_batch` (llama.py) tokenizes the conversations and hands
them to its decoder.

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
from typing import TYPE_CHECKING, Any, Protocol

import llama_cpp
import numpy as np

from ..errors import ModelError
from .base import BatchTokenCallback, Completion, GenerationSettings
from .generation_meter import GenerationMeter
from .llama_kernels import checked_step_limit
from .llama_sampling import Sampling
from .llama_slots import (
    PROMPT_CHUNK_TOKENS,
    Slot,
    balanced_parts,
    gap_fillers,
    longest_common_prefix,
)
from .reply_text import ReplyText

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchRequest:
    """One conversation's next turn, ready for the decoder."""

    prompt: list[int]  # the formatted conversation's tokens
    settings: GenerationSettings
    stops: tuple[str, ...] = ()
    grammar: tuple[str, str] | None = None  # (GBNF text, root rule) for a JSON schema


@dataclass
class _Job:
    """One conversation being generated in a `BatchDecoder.generate` call."""

    index: int
    prompt: list[int]
    settings: GenerationSettings
    reply: ReplyText
    max_tokens: int
    meter: GenerationMeter
    extra: dict[str, Any]
    slot: Slot | None = None
    sampler: Any = None
    grammar: Any = None  # a JSON schema's grammar sampler, checked after sampling (see _sample)
    feed: list[int] = field(default_factory=list)  # tokens to evaluate next, in order
    logits: np.ndarray | None = None  # saved logits of the whole cached prompt (nothing to evaluate)
    completion: list[int] = field(default_factory=list)
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
        self._slots = [Slot(i) for i in range(n_seq)]
        self._piece_buf = ctypes.create_string_buffer(64)
        self.sampling = Sampling(self._vocab)
        # Freed before the model: the model's exit stack runs this when Llama.close() runs.
        llm._model._exit_stack.callback(self.close)
        # Tokens per generation call (None: every generating conversation in one call), checked.
        self.cpu_matmul, self.max_step_tokens = checked_step_limit(ctx, self._batch, self.n_vocab, n_seq)

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
                job.extra["engine"] = {
                    **engine,
                    "cpu_matmul": self.cpu_matmul,
                    "max_step_tokens": self.max_step_tokens,
                    "batch_width": len(requests),
                }
            if job.result is not None:
                results[i] = job.result
                if on_done is not None:
                    on_done(i, job.result)
            else:
                jobs.append(job)
        try:
            self._assign_slots(jobs)
            for job in jobs:
                job.sampler = self.sampling.make_chain(job.settings)
                job.grammar = self.sampling.make_grammar(requests[job.index].grammar)
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
        reply = ReplyText([s.encode() for s in request.stops if s])
        job = _Job(index, list(prompt), settings, reply, max_tokens, meter, extra)
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
                ranked.append((-keep, not exact, j.index, -longest_common_prefix(s.tokens, j.prompt), n))
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
        # max_step_tokens tokens per llama_decode call where more would switch kernels
        # (llama_kernels.py).
        while active:
            active.sort(key=lambda j: j.slot.seq_id if j.slot else 0)
            fillers = gap_fillers(self._slots, {j.slot.seq_id for j in active if j.slot}, self.n_ctx_seq)
            entries: list[_Job | Slot] = []
            for job in active:
                assert job.slot is not None
                entries.extend(fillers.get(job.slot.seq_id, ()))
                entries.append(job)
            active = []
            for part in balanced_parts(entries, self.max_step_tokens or self.n_batch):
                while part and isinstance(part[-1], Slot):  # a placeholder at the edge bridges nothing
                    part.pop()
                while part and isinstance(part[0], Slot):
                    part.pop(0)
                if part:  # a part of placeholders only has nothing to decode
                    self._step(part, sampled)

    def _step(self, part: list[_Job | Slot], sampled: Callable[[_Job, int], None]) -> None:
        """Decode one token of each job in part (placeholders in idle slots between them)."""
        jobs = [e for e in part if isinstance(e, _Job)]
        rows: dict[int, int] = {}  # job index → batch row of its logits
        for n, entry in enumerate(part):
            if isinstance(entry, Slot):
                self._put(n, entry.tokens[-1] if entry.tokens else 0, len(entry.tokens), entry.seq_id, False)
            else:
                assert entry.slot is not None
                self._put(n, entry.feed[0], len(entry.slot.tokens), entry.slot.seq_id, True)
                rows[entry.index] = n
        self._batch.n_tokens = len(part)
        self._decode(jobs)
        for entry in part:
            if isinstance(entry, Slot):  # drop the placeholder: the cache holds exactly entry.tokens
                llama_cpp.llama_memory_seq_rm(self._memory, entry.seq_id, len(entry.tokens), -1)
        for job in jobs:  # the cache holds every one of them now, whatever sampling raises
            assert job.slot is not None
            job.slot.tokens.append(job.feed.pop())
        for job in jobs:
            sampled(job, rows[job.index])

    def _put(self, n: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        batch = self._batch
        batch.token[n] = token
        batch.pos[n] = pos
        batch.n_seq_id[n] = 1
        batch.seq_id[n][0] = seq_id
        batch.logits[n] = 1 if logits else 0

    def _prefill(self, job: _Job) -> int:
        """Decode a job's prompt suffix alone, in chunks at fixed positions; the batch row of its logits.

        The suffix starts at a chunk boundary (`Slot.reusable` keeps whole chunks only), so the
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
        best: tuple[int, bool, Slot] | None = None
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
            logits: np.ndarray | None = row
            token = self.sampling.sample_logits(job.sampler, row)
        else:
            token = llama_cpp.llama_sampler_sample(job.sampler, self._ctx, row)
            logits = None
        if job.grammar is not None:
            if logits is None:
                assert not isinstance(row, np.ndarray)
                logits = self._logits_row(row)
            token = self.sampling.grammar_checked(job.grammar, job.sampler, job.settings, logits, token)
        job.meter.on_sample(token)
        if self._accept(job, token, on_token):
            return True
        job.feed = [token]
        return False

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
        if job.reply.add(self._piece_buf.raw[:n]):
            job.finish_reason = "stop"
            return True
        if len(job.completion) >= job.max_tokens:
            job.finish_reason = "length"
            return True
        if on_token is not None and (piece := job.reply.unsent(final=False)):
            on_token(job.index, piece)
        return False

    def _finish(self, job: _Job, template: str, on_token: BatchTokenCallback | None) -> Completion:
        text = job.reply.finish()
        if on_token is not None and (piece := job.reply.unsent(final=True)):
            on_token(job.index, piece)
        return job.meter.finish(text, job.finish_reason, template, is_eog=job.is_eog, extra=job.extra)

    def _forget(self, jobs: list[_Job]) -> None:
        """After a failed decode the cache contents are uncertain: empty those sequences."""
        for job in jobs:
            if job.slot is not None:
                llama_cpp.llama_memory_seq_rm(self._memory, job.slot.seq_id, -1, -1)
                job.slot.forget()


# --- the backend side -----------------------------------------------------------------


class DecoderOwner(Protocol):
    def batch_decoder(self, width: int) -> BatchDecoder: ...


def decoder_for(backend: DecoderOwner, width: int) -> BatchDecoder:
    """The backend's batch decoder with room for `width` conversations (LlamaBackend.batch_decoder)."""
    return backend.batch_decoder(width)
