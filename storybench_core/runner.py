"""Plan and execute an evaluation: model × sequence × run × prompt.

The turns of one (model, sequence, run) are one conversation: each later
prompt is sent with every earlier prompt and answer, to the same loaded
model, so its prefix stays in the KV cache. Each response is written to the
store the moment it exists (an upsert on its task key), so a crash loses at
most the response being generated and a resume does only what is missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

from . import batch_runner, catalog
from .backends.base import Completion, GenerationSettings, Message, ModelBackend
from .backends.registry import create_backend
from .config import GenerationSettingsConfig, ModelSpec, RunConfig
from .errors import ContextOverflowError, StopRequested, StorybenchError
from .stopping import stop_check
from .store.base import Doc, Store

log = logging.getLogger(__name__)

# Seeds: run r (1-based), prompt i (0-based) → base + 1000·(r-1) + i.
SEED_RUN_STRIDE = 1000
# The live progress keeps the end of the text being written, not all of it: it is
# rewritten into the evaluation's row at every progress write.
LIVE_TEXT_CHARS = 4000


def live_text(pieces: Sequence[str] | str) -> str:
    """The last LIVE_TEXT_CHARS characters of the text so far (an ellipsis marks a cut start)."""
    text = pieces if isinstance(pieces, str) else "".join(pieces)
    return text if len(text) <= LIVE_TEXT_CHARS else "…" + text[-(LIVE_TEXT_CHARS - 1) :]


@dataclass(frozen=True)
class Task:
    model_index: int
    model_name: str
    sequence: str
    run: int  # 1-based
    prompt_index: int  # 0-based position in the sequence
    prompt_name: str
    prompt_text: str

    def key(self, evaluation_id: str) -> str:
        return task_key(evaluation_id, self.model_name, self.sequence, self.run, self.prompt_index)

    @property
    def conversation(self) -> tuple[int, str, int]:
        return (self.model_index, self.sequence, self.run)


def task_key(evaluation_id: str, model_name: str, sequence: str, run: int, prompt_index: int) -> str:
    return f"{evaluation_id}|{model_name}|{sequence}|{run}|{prompt_index}"


def seed_for(base_seed: int, run: int, prompt_index: int) -> int:
    return base_seed + SEED_RUN_STRIDE * (run - 1) + prompt_index


def plan_tasks(config: RunConfig) -> list[Task]:
    """Every task in execution order: model, then sequence, then run, then prompt."""
    tasks = []
    for mi, model in enumerate(config.models):
        for sid in config.sequences:
            seq = catalog.get_sequence(sid)
            for run in range(1, config.generation.runs + 1):
                for pi, prompt in enumerate(seq.prompts):
                    tasks.append(Task(mi, model.display_name, sid, run, pi, prompt.name, prompt.text))
    return tasks


def group_conversations(tasks: Sequence[Task]) -> list[list[Task]]:
    """Tasks grouped by (model, sequence, run), each group in prompt order."""
    groups: dict[tuple[int, str, int], list[Task]] = {}
    for t in tasks:
        groups.setdefault(t.conversation, []).append(t)
    return [sorted(g, key=lambda t: t.prompt_index) for g in groups.values()]


# --- context window -------------------------------------------------------------


@dataclass
class FittedMessages:
    messages: list[Message]
    dropped_turns: int
    prompt_tokens: int


def fit_to_context(
    system: list[Message],
    history: list[tuple[Message, Message]],
    new_prompt: Message,
    count_tokens: Callable[[Sequence[Message]], int],
    budget_tokens: int,
) -> FittedMessages:
    """Drop the oldest (prompt, answer) turns until the conversation fits the budget.

    The new prompt is never cut; if it does not fit with the system prompt
    alone, that is a ContextOverflowError for this task.
    """
    dropped = 0
    while True:
        turns = [m for pair in history[dropped:] for m in pair]
        messages = [*system, *turns, new_prompt]
        tokens = count_tokens(messages)
        if tokens <= budget_tokens:
            return FittedMessages(messages, dropped, tokens)
        if dropped >= len(history):
            raise ContextOverflowError(
                f"the prompt needs {tokens} tokens but only {budget_tokens} fit "
                "(n_ctx minus max_tokens); raise generation.n_ctx or lower generation.max_tokens"
            )
        dropped += 1


# --- loaded models --------------------------------------------------------------


class ModelPool:
    """Holds at most one loaded model; switching models unloads the previous one."""

    def __init__(
        self, factory: Callable[[ModelSpec, GenerationSettingsConfig], ModelBackend] = create_backend
    ):
        self._factory = factory
        self._key: str | None = None
        self._backend: ModelBackend | None = None
        self.loads = 0

    @staticmethod
    def _key_for(spec: ModelSpec, gen: GenerationSettingsConfig) -> str:
        # Only what changes the loaded instance: the model and its memory settings.
        return f"{spec.model_dump_json()}|{gen.n_ctx}|{gen.vram_limit_percent}|{gen.parallel_runs}"

    def get(self, spec: ModelSpec, gen: GenerationSettingsConfig) -> tuple[ModelBackend, bool]:
        """The backend for spec, and whether it was loaded now (False: reused)."""
        key = self._key_for(spec, gen)
        if self._backend is not None and key == self._key:
            return self._backend, False
        self.release()
        self._backend = self._factory(spec, gen)
        self._key = key
        self.loads += 1
        return self._backend, True

    @property
    def loaded_name(self) -> str | None:
        return self._backend.name if self._backend is not None else None

    def release(self) -> None:
        if self._backend is not None:
            try:
                self._backend.close()
            finally:
                self._backend, self._key = None, None


# --- execution ------------------------------------------------------------------


@dataclass
class RunHooks:
    """How the runner reports to the outside world (console, progress, judge, stop)."""

    event: Callable[..., None] = lambda level, message, **fields: None
    progress: Callable[[dict[str, Any]], None] = lambda fields: None
    should_stop: Callable[[], bool] = lambda: False
    on_response: Callable[[Doc, ModelBackend], None] | None = None


@dataclass
class RunSummary:
    completed: int = 0
    failed: int = 0
    skipped_existing: int = 0
    stopped: bool = False
    per_model: dict[str, dict[str, float]] = field(default_factory=dict)


def now_utc() -> datetime:
    return datetime.now(UTC)


class Runner:
    """Executes the missing tasks of one evaluation against a store."""

    def __init__(self, store: Store, pool: ModelPool | None = None, hooks: RunHooks | None = None):
        self.store = store
        self.pool = pool or ModelPool()
        self.hooks = hooks or RunHooks()

    def execute(self, evaluation: Doc, config: RunConfig) -> RunSummary:
        eid = evaluation["id"]
        tasks = plan_tasks(config)
        done = self.store.completed_task_keys(eid)
        summary = RunSummary(skipped_existing=sum(1 for t in tasks if t.key(eid) in done))
        total = len(tasks)
        self._done_count = summary.skipped_existing
        self._total = total
        if summary.skipped_existing:
            self.hooks.event("info", f"resuming: {summary.skipped_existing} of {total} tasks already stored")
        conversations = group_conversations(tasks)
        for mi, spec in enumerate(config.models):
            todo = [
                c for c in conversations if c[0].model_index == mi and any(t.key(eid) not in done for t in c)
            ]
            if not todo:
                continue
            if self.hooks.should_stop():
                summary.stopped = True
                break
            try:
                backend = self._load(spec, config.generation)
            except StopRequested:  # Stop during a load (a download can take minutes)
                summary.stopped = True
                break
            if backend is None:
                for conv in todo:
                    for t in conv:
                        if t.key(eid) not in done:
                            self._store_failure(
                                eid, spec, t, config, "model could not be loaded (see console)"
                            )
                            summary.failed += 1
                continue
            try:
                # Runs of one sequence decoded together when the backend can (batch_runner.py).
                width = batch_runner.width_for(self, spec, backend, config.generation, todo)
                if width > 1:
                    batch_runner.run_batched(self, eid, spec, backend, todo, config, done, summary, width)
                else:
                    for conv in todo:
                        self._conversation(eid, spec, backend, conv, config, done, summary)
            except StopRequested:
                summary.stopped = True
                break
        return summary

    def _load(self, spec: ModelSpec, gen: GenerationSettingsConfig) -> ModelBackend | None:
        name = spec.display_name
        self.hooks.event("info", f"loading model {name}")
        try:
            with stop_check(self.hooks.should_stop):  # a download inside the load asks it (hub.py)
                backend, fresh = self.pool.get(spec, gen)
        except StopRequested:
            self.hooks.event("warning", f"stopped while loading model {name}")
            raise
        except StorybenchError as exc:
            self.hooks.event("error", f"cannot load model {name}: {exc}")
            return None
        note = getattr(backend, "load_note", "")
        self.hooks.event(
            "info", f"{'loaded' if fresh else 'reusing loaded'} model {name}" + (f" ({note})" if note else "")
        )
        return backend

    def _conversation(
        self,
        eid: str,
        spec: ModelSpec,
        backend: ModelBackend,
        conv: list[Task],
        config: RunConfig,
        done: set[str],
        summary: RunSummary,
    ) -> None:
        gen = config.generation
        system = [{"role": "system", "content": gen.system_prompt}] if gen.system_prompt else []
        history: list[tuple[Message, Message]] = []
        stored = {
            r["prompt_index"]: r
            for r in self.store.list_responses(
                eid, model_name=spec.display_name, sequence=conv[0].sequence, run=conv[0].run
            )
            if not r.get("error")
        }
        broken_at: int | None = None
        for task in conv:
            prompt_msg: Message = {"role": "user", "content": task.prompt_text}
            if task.key(eid) in done and task.prompt_index in stored:
                history.append(
                    (prompt_msg, {"role": "assistant", "content": stored[task.prompt_index]["response"]})
                )
                continue
            if broken_at is not None:
                self._store_failure(
                    eid, spec, task, config, f"skipped: turn {broken_at + 1} of this conversation failed"
                )
                summary.failed += 1
                continue
            if self.hooks.should_stop():
                raise StopRequested()
            doc = self._generate(eid, spec, backend, task, config, system, history, prompt_msg)
            self._done_count += 1
            if doc.get("error"):
                summary.failed += 1
                broken_at = task.prompt_index
                continue
            summary.completed += 1
            stats = summary.per_model.setdefault(
                spec.display_name, {"responses": 0, "tokens": 0, "seconds": 0.0}
            )
            stats["responses"] += 1
            stats["tokens"] += doc["completion_tokens"]
            stats["seconds"] += doc["generation_time_s"]
            history.append((prompt_msg, {"role": "assistant", "content": doc["response"]}))
            if self.hooks.on_response is not None:
                self.hooks.on_response(doc, backend)

    def _generate(
        self,
        eid: str,
        spec: ModelSpec,
        backend: ModelBackend,
        task: Task,
        config: RunConfig,
        system: list[Message],
        history: list[tuple[Message, Message]],
        prompt_msg: Message,
    ) -> Doc:
        gen = config.generation
        seed = seed_for(gen.seed, task.run, task.prompt_index)
        settings = GenerationSettings(
            temperature=gen.temperature, top_p=gen.top_p, max_tokens=gen.max_tokens, seed=seed
        )
        label = f"{spec.display_name} · {task.sequence} · run {task.run} · prompt {task.prompt_index + 1} ({task.prompt_name})"
        self.hooks.event("info", f"generating {label}")
        n_ctx = backend.context_size()
        try:
            fitted = fit_to_context(system, history, prompt_msg, backend.count_tokens, n_ctx - gen.max_tokens)
        except ContextOverflowError as exc:
            self.hooks.event("error", f"{label}: {exc}")
            return self._store_failure(eid, spec, task, config, str(exc), seed=seed)
        if fitted.dropped_turns:
            self.hooks.event(
                "warning", f"{label}: dropped the {fitted.dropped_turns} oldest turn(s) to fit n_ctx={n_ctx}"
            )

        partial: list[str] = []
        state = {"last": 0.0, "start": time.perf_counter(), "tokens": 0, "written": 0}

        def on_token(piece: str) -> None:
            # An empty piece is a backend's heartbeat while it waits: a chance to stop, no text.
            if piece:
                partial.append(piece)
                state["tokens"] += 1
            now = time.perf_counter()
            if now - state["last"] >= 0.5:
                state["last"] = now
                if self.hooks.should_stop():
                    raise StopRequested()
                if state["written"] == state["tokens"]:
                    return  # nothing new to show: no progress write
                state["written"] = state["tokens"]
                elapsed = max(now - state["start"], 1e-6)
                self._progress(
                    task,
                    spec,
                    {"partial_text": live_text(partial), "tokens_per_s": state["tokens"] / elapsed},
                )

        self._progress(task, spec, {"partial_text": "", "tokens_per_s": None})
        try:
            completion = backend.chat(fitted.messages, settings, on_token)
        except StopRequested:
            self.hooks.event("warning", f"{label}: stopped by user; this response was not stored")
            raise
        except StorybenchError as exc:
            self.hooks.event("error", f"{label}: {exc}")
            return self._store_failure(eid, spec, task, config, str(exc), seed=seed, messages=fitted.messages)
        except Exception as exc:  # a backend bug must not kill the whole evaluation
            log.exception("backend crashed on %s", label)
            self.hooks.event(
                "error", f"{label}: unexpected {type(exc).__name__}: {exc} (details in the log file)"
            )
            return self._store_failure(
                eid, spec, task, config, f"{type(exc).__name__}: {exc}", seed=seed, messages=fitted.messages
            )
        doc = self._response_doc(eid, spec, task, config, seed, fitted, completion)
        doc["id"] = self.store.upsert_response(doc)
        self.hooks.event(
            "info",
            f"stored {label}: {completion.completion_tokens} tokens in {completion.generation_time_s:.1f} s "
            f"({completion.tokens_per_s:.1f} tok/s, finish={completion.finish_reason})",
        )
        self._progress(
            task, spec, {"partial_text": live_text(completion.text), "tokens_per_s": completion.tokens_per_s}
        )
        return doc

    def _progress(self, task: Task, spec: ModelSpec, fields: dict[str, Any]) -> None:
        self.hooks.progress(
            {
                "model_name": spec.display_name,
                "sequence": task.sequence,
                "run": task.run,
                "prompt_index": task.prompt_index,
                "prompt_name": task.prompt_name,
                "tasks_done": self._done_count,
                "tasks_total": self._total,
                **fields,
            }
        )

    def _base_doc(self, eid: str, spec: ModelSpec, task: Task, config: RunConfig, seed: int) -> Doc:
        return {
            "id": uuid4().hex,
            "evaluation_id": eid,
            "task_key": task.key(eid),
            "model_name": spec.display_name,
            "model_ref": spec.ref(),
            "sequence": task.sequence,
            "run": task.run,
            "prompt_index": task.prompt_index,
            "prompt_name": task.prompt_name,
            "prompt_text": task.prompt_text,
            "seed": seed,
            "temperature": config.generation.temperature,
            "created_at": now_utc(),
        }

    def _response_doc(
        self,
        eid: str,
        spec: ModelSpec,
        task: Task,
        config: RunConfig,
        seed: int,
        fitted: FittedMessages,
        c: Completion,
    ) -> Doc:
        return self._base_doc(eid, spec, task, config, seed) | {
            "messages": fitted.messages,
            "response": c.text,
            "finish_reason": c.finish_reason,
            "prompt_tokens": c.prompt_tokens,
            "prompt_tokens_evaluated": c.prompt_tokens_evaluated,
            "completion_tokens": c.completion_tokens,
            "generation_time_s": round(c.generation_time_s, 4),
            "tokens_per_s": round(c.tokens_per_s, 2),
            "first_token_s": c.first_token_s,
            "dropped_turns": fitted.dropped_turns,
            "template": c.template,
            # What the exact text depended on besides prompt and settings (llama.cpp build, CPU
            # features, threads; see backends/llama_batch.py), and what the KV cache served.
            "engine": c.extra.get("engine"),
            "prompt_cache": c.extra.get("prompt_cache"),
            "error": None,
        }

    def _store_failure(
        self,
        eid: str,
        spec: ModelSpec,
        task: Task,
        config: RunConfig,
        error: str,
        *,
        seed: int | None = None,
        messages: list[Message] | None = None,
    ) -> Doc:
        seed = seed if seed is not None else seed_for(config.generation.seed, task.run, task.prompt_index)
        doc = self._base_doc(eid, spec, task, config, seed) | {
            "messages": messages or [],
            "response": "",
            "finish_reason": "error",
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "generation_time_s": 0.0,
            "tokens_per_s": 0.0,
            "error": error,
        }
        doc["id"] = self.store.upsert_response(doc)
        return doc
