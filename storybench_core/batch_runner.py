"""Batched execution: the runs of one (model, sequence) generated together, turn by turn.

The sequential runner (runner.py) finishes one conversation before starting
the next. When a backend can decode several conversations at once
(`supports_batch`) and the batch width is above 1, the runner hands the
conversations of each (model, sequence) here instead: turn k of every run
goes to the backend in one `chat_batch` call, each run with its own seed and
its own KV sequence, so turn k+1 only evaluates its new prompt tokens.

Everything else is the sequential path's rules, per conversation: only the
missing tasks run (a resumed conversation is rebuilt from its stored turns),
each response is stored the moment its run finishes, a conversation that
overflows the context or fails is recorded as failed and its later turns as
skipped while the other runs go on, and a stop request ends the batch
within seconds (finished runs are stored, unfinished ones are not).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .backends.base import Completion, GenerationSettings, Message, ModelBackend
from .config import GenerationSettingsConfig, ModelSpec, RunConfig
from .errors import ContextOverflowError, StopRequested, StorybenchError
from .fitting import choose_batch_width
from .store.base import Doc

if TYPE_CHECKING:
    from .runner import FittedMessages, Runner, RunSummary, Task

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5
# Share of free RAM (CPU) the KV caches of a batch may take; VRAM uses generation.vram_limit_percent.
RAM_LIMIT_PERCENT = 80.0


# --- how many at once -------------------------------------------------------------------


def choose_width(
    backend: ModelBackend, gen: GenerationSettingsConfig, n_conversations: int
) -> tuple[int, str]:
    """How many conversations to generate together on this backend, and why (1 = sequential)."""
    cap = gen.parallel_runs
    if cap == 1:
        return 1, "generation.parallel_runs = 1: one run after another"
    if not getattr(backend, "supports_batch", False) or not callable(getattr(backend, "chat_batch", None)):
        return 1, f"{backend.name} cannot generate several conversations together: one run after another"
    if n_conversations <= 1:
        return 1, "a single conversation to generate"
    spec: ModelSpec | None = getattr(backend, "spec", None)
    model_path = getattr(backend, "model_path", None)
    if model_path is not None:
        width, reason = _local_width(backend, gen, cap)
    elif spec is not None and spec.kind == "api":
        width = cap or n_conversations
        rpm = f", {spec.requests_per_minute} requests/minute" if spec.requests_per_minute else ""
        reason = (
            f"runs sent concurrently, at most {spec.max_concurrency} in flight to {spec.base_url}{rpm}"
            + (f" (parallel_runs {cap})" if cap else "")
        )
    else:
        width = cap or n_conversations
        reason = f"parallel_runs {cap}" if cap else "every run at once"
    if width > n_conversations:
        width = n_conversations
        reason += f"; {n_conversations} runs to generate"
    return max(width, 1), reason


def width_for(
    runner: Runner,
    spec: ModelSpec,
    backend: ModelBackend,
    gen: GenerationSettingsConfig,
    todo: list[list[Task]],
) -> int:
    """The batch width for one model's conversations, logged to the console and the progress."""
    per_sequence: dict[str, int] = {}
    for conv in todo:
        per_sequence[conv[0].sequence] = per_sequence.get(conv[0].sequence, 0) + 1
    try:
        width, reason = choose_width(backend, gen, max(per_sequence.values(), default=0))
    except StorybenchError as exc:  # e.g. an unreadable GGUF header: generate sequentially, say why
        width, reason = 1, f"could not size a batch ({exc}); one run after another"
    if width > 1 or gen.parallel_runs not in (None, 1):
        runner.hooks.event("info", f"{spec.display_name}: batch width {width}: {reason}", batch_width=width)
    return width


def _local_width(backend: Any, gen: GenerationSettingsConfig, cap: int | None) -> tuple[int, str]:
    """A GGUF model: KV cache per conversation × n_ctx against free RAM or VRAM."""
    from .gguf_info import read_gguf_info
    from .hardware import hardware_snapshot

    # The loaded backend keeps the header it read before loading: no second parse per call
    # (a judge sizes its batch per stored response).
    info = getattr(backend, "gguf_info", None) or read_gguf_info(backend.model_path)
    snapshot = hardware_snapshot(cpu_sample_s=0)
    plan = getattr(backend, "gpu_plan", None)
    gpu = snapshot.best_gpu
    if plan is not None and plan.n_gpu_layers > 0 and gpu is not None:
        # The model is loaded: its weights already left the free VRAM; count them back in,
        # since choose_batch_width takes them out of the figure it is given.
        free = gpu.vram_free_bytes + plan.estimated_vram_bytes
        return choose_batch_width(info, backend.context_size(), free, cap, gen.vram_limit_percent)
    # CPU: the weights are memory-mapped, so they are page cache and count as available already.
    return choose_batch_width(
        info, backend.context_size(), snapshot.ram_available_bytes, cap, RAM_LIMIT_PERCENT
    )


# --- one (model, sequence): waves of turns ---------------------------------------------------


@dataclass
class _Conversation:
    """One run being generated: its tasks, the turns so far and where it broke, if it did."""

    tasks: list[Task]
    stored: dict[int, Doc]
    history: list[tuple[Message, Message]] = field(default_factory=list)
    broken_at: int | None = None


@dataclass
class _Item:
    """One conversation's turn inside a `chat_batch` call."""

    conv: _Conversation
    task: Task
    seed: int
    settings: GenerationSettings
    fitted: FittedMessages
    prompt_msg: Message
    label: str
    pieces: list[str] = field(default_factory=list)
    tokens: int = 0
    done: bool = False


class BatchedConversations:
    """Runs the missing tasks of some conversations of one model, `width` conversations at a time."""

    def __init__(self, runner: Runner, eid: str, spec: ModelSpec, backend: ModelBackend, config: RunConfig):
        self.runner = runner
        self.eid = eid
        self.spec = spec
        self.backend = backend
        self.config = config
        gen = config.generation
        self.system: list[Message] = (
            [{"role": "system", "content": gen.system_prompt}] if gen.system_prompt else []
        )

    def run(self, conversations: list[list[Task]], done: set[str], summary: RunSummary, width: int) -> None:
        """Every conversation, grouped by sequence, in chunks of `width`; StopRequested propagates."""
        by_sequence: dict[str, list[list[Task]]] = {}
        for conv in conversations:
            by_sequence.setdefault(conv[0].sequence, []).append(conv)
        for group in by_sequence.values():
            for start in range(0, len(group), width):
                self._chunk(group[start : start + width], done, summary)

    def _chunk(self, tasks_by_conv: list[list[Task]], done: set[str], summary: RunSummary) -> None:
        convs = [_Conversation(tasks, self._stored(tasks[0])) for tasks in tasks_by_conv]
        for k in range(max(len(c.tasks) for c in convs)):
            wave: list[tuple[_Conversation, Task, Message]] = []
            for conv in convs:
                if k >= len(conv.tasks):
                    continue
                task = conv.tasks[k]
                prompt_msg: Message = {"role": "user", "content": task.prompt_text}
                if task.key(self.eid) in done and task.prompt_index in conv.stored:
                    answer = conv.stored[task.prompt_index]["response"]
                    conv.history.append((prompt_msg, {"role": "assistant", "content": answer}))
                elif conv.broken_at is not None:
                    self.runner._store_failure(
                        self.eid,
                        self.spec,
                        task,
                        self.config,
                        f"skipped: turn {conv.broken_at + 1} of this conversation failed",
                    )
                    summary.failed += 1
                else:
                    wave.append((conv, task, prompt_msg))
            if wave:
                if self.runner.hooks.should_stop():
                    raise StopRequested()
                self._wave(wave, summary)

    def _stored(self, task: Task) -> dict[int, Doc]:
        """The stored, successful turns of a conversation, by prompt index (for a resume)."""
        docs = self.runner.store.list_responses(
            self.eid, model_name=self.spec.display_name, sequence=task.sequence, run=task.run
        )
        return {d["prompt_index"]: d for d in docs if not d.get("error")}

    # -- one turn of several conversations -------------------------------------------------

    def _prepare(self, wave: list[tuple[_Conversation, Task, Message]], summary: RunSummary) -> list[_Item]:
        from .runner import fit_to_context, seed_for

        gen = self.config.generation
        n_ctx = self.backend.context_size()
        items: list[_Item] = []
        for conv, task, prompt_msg in wave:
            seed = seed_for(gen.seed, task.run, task.prompt_index)
            label = (
                f"{self.spec.display_name} · {task.sequence} · run {task.run} · "
                f"prompt {task.prompt_index + 1} ({task.prompt_name})"
            )
            try:
                fitted = fit_to_context(
                    self.system, conv.history, prompt_msg, self.backend.count_tokens, n_ctx - gen.max_tokens
                )
            except ContextOverflowError as exc:
                self.runner.hooks.event("error", f"{label}: {exc}")
                self.runner._store_failure(self.eid, self.spec, task, self.config, str(exc), seed=seed)
                self._failed(conv, task, summary)
                continue
            if fitted.dropped_turns:
                self.runner.hooks.event(
                    "warning",
                    f"{label}: dropped the {fitted.dropped_turns} oldest turn(s) to fit n_ctx={n_ctx}",
                )
            settings = GenerationSettings(
                temperature=gen.temperature, top_p=gen.top_p, max_tokens=gen.max_tokens, seed=seed
            )
            items.append(_Item(conv, task, seed, settings, fitted, prompt_msg, label))
        return items

    def _wave(self, wave: list[tuple[_Conversation, Task, Message]], summary: RunSummary) -> None:
        items = self._prepare(wave, summary)
        if not items:
            return
        first = items[0].task
        runs = ", ".join(str(it.task.run) for it in items)
        self.runner.hooks.event(
            "info",
            f"generating {self.spec.display_name} · {first.sequence} · prompt {first.prompt_index + 1} "
            f"({first.prompt_name}) for runs {runs} together",
        )
        started = time.perf_counter()
        state = {"last": 0.0, "written": 0}
        finished: list[Doc] = []

        def progress(final: bool = False) -> None:
            from .runner import live_text  # runner imports this module

            elapsed = max(time.perf_counter() - started, 1e-6)
            lead = next((it for it in items if not it.done), items[-1])
            self.runner._progress(
                lead.task,
                self.spec,
                {
                    "partial_text": live_text(lead.pieces),
                    # The machine's figure: every run's tokens over the wall time so far.
                    "tokens_per_s": sum(it.tokens for it in items) / elapsed if not final else None,
                    "aggregate_tokens_per_s": round(sum(it.tokens for it in items) / elapsed, 2),
                    "batch_width": len(items),
                    "batch_runs": [it.task.run for it in items],
                    "run_tokens_per_s": {str(it.task.run): round(it.tokens / elapsed, 2) for it in items},
                },
            )

        def on_token(i: int, piece: str) -> None:
            item = items[i]
            if piece:  # an empty piece is a backend's heartbeat: a chance to stop, no text
                item.pieces.append(piece)
                item.tokens += 1
            now = time.perf_counter()
            if now - state["last"] >= PROGRESS_EVERY_S:
                state["last"] = now
                if self.runner.hooks.should_stop():
                    raise StopRequested()
                tokens = sum(it.tokens for it in items)
                if tokens != state["written"]:  # a write only when there is new text
                    state["written"] = tokens
                    progress()

        def on_done(i: int, completion: Completion) -> None:
            item = items[i]
            item.done = True
            item.tokens = completion.completion_tokens
            doc = self._store(item, completion, summary, len(items))
            if doc is not None:
                finished.append(doc)
            if self.runner.hooks.should_stop():  # between two stored runs is a clean place to stop
                raise StopRequested()

        self.runner._progress(
            first, self.spec, {"partial_text": "", "tokens_per_s": None, "batch_width": len(items)}
        )
        try:
            self.backend.chat_batch(  # type: ignore[attr-defined]
                [it.fitted.messages for it in items], [it.settings for it in items], on_token, on_done
            )
        except StopRequested:
            unfinished = sum(1 for it in items if not it.done)
            self.runner.hooks.event(
                "warning",
                f"stopped by user; {unfinished} unfinished response(s) of this batch were not stored",
            )
            raise
        except Exception as exc:
            # A StorybenchError or a backend bug: the unfinished runs fail, the evaluation goes on.
            if not isinstance(exc, StorybenchError):
                log.exception("batched generation crashed")
            error = str(exc) if isinstance(exc, StorybenchError) else f"{type(exc).__name__}: {exc}"
            self._fail_unfinished(items, error, summary)
        # A backend that returned without reporting a run must not leave it silently missing.
        self._fail_unfinished(items, "the backend returned no response for this run", summary)
        elapsed = max(time.perf_counter() - started, 1e-6)
        tokens = sum(d["completion_tokens"] for d in finished)
        if finished:
            self.runner.hooks.event(
                "info",
                f"batch of {len(items)}: {tokens} tokens in {elapsed:.1f} s "
                f"({tokens / elapsed:.1f} tok/s aggregate)",
            )
        progress(final=True)
        # Judging waits for the batch: a judge call inside it would stall every other run.
        hook = self.runner.hooks.on_response
        if hook is not None and finished:
            many = getattr(hook, "on_responses", None)  # AutoJudge: the runs judged together
            if callable(many):
                many(finished, self.backend)
            else:
                for doc in finished:
                    hook(doc, self.backend)

    def _fail_unfinished(self, items: list[_Item], error: str, summary: RunSummary) -> None:
        for item in items:
            if not item.done:
                item.done = True
                self._record_failure(item, error, summary)

    def _record_failure(self, item: _Item, error: str, summary: RunSummary) -> None:
        """Say why on the console, store the failed task, and skip the conversation's later turns."""
        self.runner.hooks.event("error", f"{item.label}: {error}")
        self.runner._store_failure(
            self.eid, self.spec, item.task, self.config, error, seed=item.seed, messages=item.fitted.messages
        )
        self._failed(item.conv, item.task, summary)

    def _store(self, item: _Item, completion: Completion, summary: RunSummary, width: int) -> Doc | None:
        """Store one finished run's response (or its failure); the stored doc, None on failure."""
        if completion.finish_reason == "error":
            error = str(completion.extra.get("error") or "the backend could not generate this response")
            self._record_failure(item, error, summary)
            return None
        doc = self.runner._response_doc(
            self.eid, self.spec, item.task, self.config, item.seed, item.fitted, completion
        )
        doc["batch_width"] = width  # how many runs were generated together with this one
        doc["id"] = self.runner.store.upsert_response(doc)
        self.runner._done_count += 1
        self.runner.hooks.event(
            "info",
            f"stored {item.label}: {completion.completion_tokens} tokens in {completion.generation_time_s:.1f} s "
            f"({completion.tokens_per_s:.1f} tok/s, finish={completion.finish_reason})",
        )
        summary.completed += 1
        stats = summary.per_model.setdefault(
            self.spec.display_name, {"responses": 0, "tokens": 0, "seconds": 0.0}
        )
        stats["responses"] += 1
        stats["tokens"] += doc["completion_tokens"]
        stats["seconds"] += doc["generation_time_s"]
        item.conv.history.append((item.prompt_msg, {"role": "assistant", "content": completion.text}))
        return doc

    def _failed(self, conv: _Conversation, task: Task, summary: RunSummary) -> None:
        conv.broken_at = task.prompt_index
        summary.failed += 1
        self.runner._done_count += 1


def run_batched(
    runner: Runner,
    eid: str,
    spec: ModelSpec,
    backend: ModelBackend,
    conversations: Sequence[list[Task]],
    config: RunConfig,
    done: set[str],
    summary: RunSummary,
    width: int,
) -> None:
    """The runner's entry point: generate these conversations' missing tasks, `width` at a time."""
    BatchedConversations(runner, eid, spec, backend, config).run(list(conversations), done, summary, width)
