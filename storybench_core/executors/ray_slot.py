"""One slot of a Ray cluster (a GPU, or a CPU slot where there is none): the actor's body.

A plain class, so it imports without Ray; ray_executor.py wraps it with `ray.remote`. The slot
holds one loaded model (ModelPool) and runs the shares it is handed through the normal engine
(Runner → Scheduler → EvaluationRun), writing every response straight to the shared store with the
worker's lease: a write after the lease is gone raises LeaseLost, and an upsert by task key makes a
write retried after a lost reply harmless. It reads the evaluation's stop flag and lease from the
store itself, and buffers its console lines and live progress for the driver to collect (`drain`),
which runs beside `run` (the actor has two threads).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from ..auto_judge import auto_judge_hook
from ..backends.base import ModelBackend
from ..config import RunConfig
from ..errors import LeaseLost, StoreError
from ..execution import RunHooks
from ..runner import ModelPool, Runner
from ..store.base import Doc, Lease, Store
from ..tasks import plan_tasks
from .dispatch import ConversationId

log = logging.getLogger(__name__)

STOP_CHECK_EVERY_S = 0.5

# How a store is wrapped so that its response writes hold the worker's lease (jobs.LeasedWrites).
Guard = Callable[[Store, Lease], Any]


@dataclass(frozen=True)
class StoreLocation:
    """Where a slot opens the driver's store: a SQLite file (one machine) or a MongoDB URI."""

    kind: str  # "sqlite" | "mongodb"
    target: str  # the file path, or the URI (it may hold a password: never logged, never shown)
    db_name: str = ""

    @classmethod
    def of(cls, store: Store) -> StoreLocation:
        uri, path = getattr(store, "uri", None), getattr(store, "path", None)
        if isinstance(uri, str) and uri:
            return cls("mongodb", uri, str(getattr(store, "db_name", "") or "storybench"))
        if isinstance(path, Path):
            return cls("sqlite", str(path))
        raise StoreError(
            f"the store {store.describe()} cannot be opened from a Ray node (not SQLite or MongoDB)"
        )

    def open(self) -> Store:
        if self.kind == "mongodb":
            from ..store.mongo import MongoStore

            return MongoStore(self.target, self.db_name)
        from ..store.sqlite import SQLiteStore

        return SQLiteStore(Path(self.target))


@dataclass
class ShareResult:
    """What one share did: counts, the task keys it stored, how it ended, its last console lines."""

    slot: int
    node_id: str
    model_index: int
    stored_keys: list[str] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    skipped_existing: int = 0
    stopped: bool = False
    lost: bool = False
    per_model: dict[str, dict[str, float]] = field(default_factory=dict)
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    seconds: float = 0.0


class _Recorder:
    """The slot's on_response hook: notes each stored task key, then lets the auto-judge see it."""

    def __init__(self, judge: Any, stored: list[str], lock: threading.Lock) -> None:
        self.judge, self.stored, self.lock = judge, stored, lock

    def __call__(self, doc: Doc, backend: ModelBackend) -> None:
        self.on_responses([doc], backend)

    def on_responses(self, docs: Sequence[Doc], backend: ModelBackend) -> None:
        with self.lock:
            self.stored.extend(d["task_key"] for d in docs)
        if self.judge is not None:
            self.judge.on_responses(docs, backend)


class SlotActor:
    """One loaded model on one GPU or CPU slot; runs whole conversations of one evaluation."""

    def __init__(
        self,
        slot: int,
        location: StoreLocation,
        evaluation: Doc,
        config: RunConfig,
        lease: Lease,
        guard: Guard,
    ) -> None:
        self.slot = slot
        self.evaluation = evaluation
        self.eid = str(evaluation["id"])
        self.config = config
        self.lease = lease
        self.raw_store = location.open()
        self.store = cast(Store, guard(self.raw_store, lease))
        self.pool = ModelPool()
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._lost = False
        self._checked = 0.0
        self._stop = False
        self._events: list[tuple[str, str, dict[str, Any]]] = []
        self._progress: dict[str, Any] | None = None
        self._stored: list[str] = []
        self._share_done_before = 0  # tasks of the current share stored before it started
        judge = (
            auto_judge_hook(self.store, config, self.eid, self.pool, self._event)
            if config.auto_evaluate
            else None
        )
        self._judge = judge
        self._recorder = _Recorder(judge, self._stored, self._lock)

    # --- what the driver calls ------------------------------------------------------------
    def node_id(self) -> str:
        import ray  # only ever called inside a Ray worker process

        return str(ray.get_runtime_context().get_node_id())

    def run(self, model_index: int, conversations: list[ConversationId]) -> ShareResult:
        """Every missing turn of these conversations (all of one model); returns what was stored."""
        started = time.perf_counter()
        with self._lock:
            self._stored.clear()
            self._progress = None
        wanted = set(conversations)
        done = self.raw_store.completed_task_keys(self.eid)
        share = [t.key(self.eid) for t in plan_tasks(self.config) if t.conversation in wanted]
        self._share_done_before = sum(1 for k in share if k in done)
        hooks = RunHooks(
            event=self._event,
            progress=self._on_progress,
            should_stop=self._should_stop,
            on_response=self._recorder,
        )
        result = ShareResult(self.slot, self.node_id(), model_index)
        try:
            summary = Runner(self.store, self.pool, hooks).execute(self.evaluation, self.config, only=wanted)
        except LeaseLost:
            result.lost, result.stopped = True, True
        else:
            result.completed, result.failed = summary.completed, summary.failed
            result.skipped_existing, result.stopped = summary.skipped_existing, summary.stopped
            result.per_model = summary.per_model
            result.lost = self._lost or (summary.stopped and not self._lease_held())
        with self._lock:
            result.stored_keys = list(self._stored)
            result.events, self._events = self._events, []
        result.seconds = time.perf_counter() - started
        return result

    def drain(self) -> tuple[list[tuple[str, str, dict[str, Any]]], dict[str, Any] | None]:
        """Console lines since the last call, and the latest live progress (None: none since)."""
        with self._lock:
            events, self._events = self._events, []
            progress, self._progress = self._progress, None
        return events, progress

    def stop(self) -> bool:
        """The driver's stop (a Stop, a worker shutting down): the running share ends within a second."""
        self._halt.set()
        return True

    def flush_judge(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Judge what the auto-judge queued for a different local model (the run's end)."""
        if self._judge is not None and not self._halt.is_set():
            try:
                self._judge.flush()
            except LeaseLost:
                pass
            finally:
                self._judge.close()
        with self._lock:
            events, self._events = self._events, []
        return events

    # --- hooks ------------------------------------------------------------------------------
    def _event(self, level: str, message: str, **fields: Any) -> None:
        with self._lock:
            self._events.append((level, message, fields))

    def _on_progress(self, fields: dict[str, Any]) -> None:
        # tasks_done counts from the share's start: the driver adds the other slots' work.
        fields = {**fields, "share_done": int(fields.get("tasks_done") or 0) - self._share_done_before}
        with self._lock:
            self._progress = fields

    def _should_stop(self) -> bool:
        now = time.monotonic()
        if now - self._checked >= STOP_CHECK_EVERY_S:
            self._checked = now
            try:
                current = self.raw_store.get_evaluation(self.eid, brief=True)
            except StoreError as exc:  # unreadable for a moment: keep the last answer
                log.warning("[%s] slot %d could not read the stop flag: %s", self.eid, self.slot, exc)
            else:
                if not self.lease.held_in(current):
                    self._lost = True
                self._stop = current is None or current.get("status") != "running"
        if self._lost:
            raise LeaseLost(f"{self.lease.owner} lost evaluation {self.eid} (slot {self.slot})")
        return self._stop or self._halt.is_set()

    def _lease_held(self) -> bool:
        try:
            return self.lease.held_in(self.raw_store.get_evaluation(self.eid, brief=True))
        except StoreError:
            return True  # unknown: the driver's own checks decide
