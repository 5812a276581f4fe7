"""One evaluation being executed: how it reports (RunHooks), what it counted, where responses go.

Shared by the runner (runner.py), which makes one per execution, and the
scheduler (scheduler.py), which stores every response and failure through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

from .backends.base import Completion, Message, ModelBackend
from .config import ModelSpec, RunConfig
from .store.base import Doc, Store
from .tasks import FittedMessages, Task, seed_for


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


def can_batch(backend: ModelBackend) -> bool:
    """Whether the backend decodes several conversations in one call (`chat_batch`)."""
    return bool(getattr(backend, "supports_batch", False)) and callable(getattr(backend, "chat_batch", None))


# --- the evaluation being executed: where responses go, what was counted ----------------


@dataclass
class EvaluationRun:
    """One evaluation's execution state, shared by every model's scheduler."""

    store: Store
    evaluation_id: str
    config: RunConfig
    hooks: RunHooks
    summary: RunSummary
    done_keys: set[str]  # task keys already stored when the execution started
    total: int
    finished: int = 0  # tasks stored or failed so far, those stored before included

    def progress(self, spec: ModelSpec, task: Task, fields: dict[str, Any]) -> None:
        self.hooks.progress(
            {
                "model_name": spec.display_name,
                "sequence": task.sequence,
                "run": task.run,
                "prompt_index": task.prompt_index,
                "prompt_name": task.prompt_name,
                "tasks_done": self.finished,
                "tasks_total": self.total,
                **fields,
            }
        )

    def _base_doc(self, spec: ModelSpec, task: Task, seed: int) -> Doc:
        eid = self.evaluation_id
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
            "temperature": self.config.generation.temperature,
            "created_at": now_utc(),
        }

    def store_response(
        self,
        spec: ModelSpec,
        task: Task,
        seed: int,
        fitted: FittedMessages,
        c: Completion,
        batch_width: int | None,
    ) -> Doc:
        doc = self._base_doc(spec, task, seed) | {
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
        if batch_width is not None:
            doc["batch_width"] = batch_width  # how many conversations were generated together
        doc["id"] = self.store.upsert_response(doc)
        self.finished += 1
        self.summary.completed += 1
        stats = self.summary.per_model.setdefault(
            spec.display_name, {"responses": 0, "tokens": 0, "seconds": 0.0}
        )
        stats["responses"] += 1
        stats["tokens"] += doc["completion_tokens"]
        stats["seconds"] += doc["generation_time_s"]
        return doc

    def store_failure(
        self,
        spec: ModelSpec,
        task: Task,
        error: str,
        *,
        seed: int | None = None,
        messages: list[Message] | None = None,
    ) -> Doc:
        seed = (
            seed if seed is not None else seed_for(self.config.generation.seed, task.run, task.prompt_index)
        )
        doc = self._base_doc(spec, task, seed) | {
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
        self.finished += 1
        self.summary.failed += 1
        return doc
