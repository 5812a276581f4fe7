"""Evaluations are jobs in the store; a Worker claims and runs them.

Start = insert an evaluation with status `queued`. Any worker (the thread the
dashboard owns, or `storybench worker` in another process) claims it
atomically, heartbeats while it works, checks the stop flag between streamed
tokens, and records the outcome. A `running` evaluation whose heartbeat is
stale is requeued; the runner then does only the missing tasks.

Statuses: queued → running → completed | failed | stopped;
running → stopping (user) → stopped; stopped/failed → queued (resume).
Queue, stop, resume and reset take the acting principal: its role is checked
here (not only in a page), an operator's queued work is capped, and each change
is recorded in the audit trail.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from uuid import uuid4

from . import audit
from .access import AccessPolicy, Principal, check_queue_limits, current_policy, require
from .config import RunConfig, config_hash, config_to_dict, parse_config
from .errors import JobError, StopRequested, StoreError, StorybenchError
from .runner import ModelPool, RunHooks, Runner, RunSummary, now_utc, plan_tasks
from .store.base import ACTIVE_STATUSES, Doc, Store

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0
PROGRESS_EVERY_S = 0.5


def queued_work(store: Store, principal: Principal) -> tuple[int, int]:
    """(evaluations, tasks not yet done) the principal has queued or running."""
    mine = [d for d in store.list_evaluations(statuses=ACTIVE_STATUSES) if d.get("queued_by") == principal.id]
    left = sum(
        max(0, (d.get("total_tasks") or 0) - (d.get("completed_tasks") or 0) - (d.get("failed_tasks") or 0))
        for d in mine
    )
    return len(mine), left


def _check_limits(store: Store, principal: Principal, new_tasks: int, policy: AccessPolicy | None) -> None:
    if principal.role == "admin":
        return
    count, left = queued_work(store, principal)
    check_queue_limits(
        principal,
        policy or current_policy(),
        queued_evaluations=count,
        queued_tasks=left,
        new_tasks=new_tasks,
    )


def enqueue(
    store: Store,
    config: RunConfig,
    principal: Principal,
    name: str | None = None,
    *,
    policy: AccessPolicy | None = None,
) -> str:
    """Queue a new evaluation for principal (an operator, within the policy's limits); returns its id."""
    require(principal, "queue")
    tasks = plan_tasks(config)
    _check_limits(store, principal, len(tasks), policy)
    doc = {
        "id": uuid4().hex[:12],
        "name": name or config.name,
        "config": config_to_dict(config),
        "config_hash": config_hash(config),
        "status": "queued",
        "created_at": now_utc(),
        "started_at": None,
        "finished_at": None,
        "total_tasks": len(tasks),
        "completed_tasks": 0,
        "failed_tasks": 0,
        "worker_id": None,
        "heartbeat_at": None,
        "error": None,
        "progress": {},
        "queued_by": principal.id,
    }
    eid = store.create_evaluation(doc)
    store.append_event(
        eid,
        "info",
        f"queued '{doc['name']}' by {principal.id}: {len(tasks)} tasks (config {doc['config_hash']})",
    )
    audit.record(
        store,
        principal,
        "queue",
        eid,
        {"name": doc["name"], "tasks": len(tasks), "config_hash": doc["config_hash"]},
    )
    return eid


def get_evaluation(store: Store, evaluation_id: str) -> Doc:
    doc = store.get_evaluation(evaluation_id)
    if doc is None:
        known = ", ".join(e["id"] for e in store.list_evaluations(limit=5)) or "none yet"
        raise JobError(f"no evaluation with id '{evaluation_id}' in {store.describe()} (recent: {known})")
    return doc


def evaluation_config(doc: Doc) -> RunConfig:
    return parse_config(doc["config"], source=f"evaluation {doc['id']}")


def request_stop(store: Store, evaluation_id: str, principal: Principal) -> str:
    """Ask an evaluation to stop; returns the new status."""
    require(principal, "stop")
    get_evaluation(store, evaluation_id)
    if store.transition_evaluation(
        evaluation_id, ["queued"], {"status": "stopped", "finished_at": now_utc()}
    ):
        store.append_event(evaluation_id, "warning", f"stopped by {principal.id} before it started")
        audit.record(store, principal, "stop", evaluation_id, {"status": "stopped"})
        return "stopped"
    if store.transition_evaluation(evaluation_id, ["running"], {"status": "stopping"}):
        store.append_event(
            evaluation_id, "warning", f"stop requested by {principal.id}; finishing within seconds"
        )
        audit.record(store, principal, "stop", evaluation_id, {"status": "stopping"})
        return "stopping"
    return get_evaluation(store, evaluation_id)["status"]


def requeue(
    store: Store,
    evaluation_id: str,
    principal: Principal,
    reason: str = "resume requested",
    *,
    policy: AccessPolicy | None = None,
) -> None:
    """Put a stopped, failed or completed evaluation back in the queue (only missing tasks run)."""
    require(principal, "resume")
    doc = get_evaluation(store, evaluation_id)
    missing = max(0, (doc.get("total_tasks") or 0) - (doc.get("completed_tasks") or 0))
    _check_limits(store, principal, missing, policy)
    if not store.transition_evaluation(
        evaluation_id,
        ["stopped", "failed", "completed"],
        {"status": "queued", "finished_at": None, "error": None, "worker_id": None},
    ):
        raise JobError(
            f"evaluation {evaluation_id} is {doc['status']}; only stopped, failed or completed ones can be resumed"
        )
    store.append_event(evaluation_id, "info", f"requeued: {reason} (by {principal.id})")
    audit.record(store, principal, "resume", evaluation_id, {"reason": reason, "from_status": doc["status"]})


def reset(store: Store, evaluation_id: str, principal: Principal) -> None:
    """Force a running/stopping evaluation whose worker died back to `stopped`."""
    require(principal, "reset")
    doc = get_evaluation(store, evaluation_id)
    if not store.transition_evaluation(
        evaluation_id,
        ["running", "stopping"],
        {"status": "stopped", "worker_id": None, "finished_at": now_utc()},
    ):
        raise JobError(f"evaluation {evaluation_id} is {doc['status']}, not running; nothing to reset")
    store.append_event(
        evaluation_id, "warning", f"reset by {principal.id} (worker presumed dead); resume to finish it"
    )
    audit.record(
        store,
        principal,
        "reset",
        evaluation_id,
        {"from_status": doc["status"], "worker_id": doc.get("worker_id")},
    )


def worker_process_alive(worker_id: str | None) -> bool | None:
    """Whether a worker's process still exists: None when it runs on another host (unknowable here)."""
    try:
        host, pid, _ = (worker_id or "").split(":")
        pid_n = int(pid)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_stale(store: Store, stale_after_s: float = STALE_AFTER_S) -> list[str]:
    """Requeue running evaluations whose worker stopped heartbeating or whose local process is gone."""
    cutoff = now_utc() - timedelta(seconds=stale_after_s)
    recovered = []
    for doc in store.list_evaluations(statuses=["running", "stopping"]):
        beat = doc.get("heartbeat_at")
        fresh = beat is not None and beat >= cutoff
        if fresh and worker_process_alive(doc.get("worker_id")) is not False:
            continue
        new = "queued" if doc["status"] == "running" else "stopped"
        if store.transition_evaluation(doc["id"], [doc["status"]], {"status": new, "worker_id": None}):
            store.append_event(doc["id"], "warning", f"worker {doc.get('worker_id')} went silent; {new}")
            recovered.append(doc["id"])
    return recovered


def active_evaluation(store: Store) -> Doc | None:
    """The evaluation a viewer most likely wants: running first, then the oldest queued."""
    for statuses in (["running", "stopping"], ["queued"]):
        docs = store.list_evaluations(statuses=statuses)
        if docs:
            return docs[-1]
    return None


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:6]}"


AutoJudgeFactory = Callable[[Store, RunConfig, str, ModelPool, Callable[..., None]], Any]


class Worker:
    """Claims queued evaluations and runs them; one loaded model at a time."""

    def __init__(
        self,
        store: Store,
        worker_id: str | None = None,
        *,
        poll_s: float = 1.0,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = STALE_AFTER_S,
        pool: ModelPool | None = None,
    ) -> None:
        self.store = store
        self.worker_id = worker_id or default_worker_id()
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.pool = pool or ModelPool()
        self.current: str | None = None
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> Worker:
        if self._thread is None or not self._thread.is_alive():
            self._halt.clear()
            self._thread = threading.Thread(
                target=self.run_forever, name=f"storybench-worker-{self.worker_id}", daemon=True
            )
            self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.pool.release()

    def run_forever(self) -> None:
        while not self._halt.is_set():
            try:
                if not self.run_once():
                    self._halt.wait(self.poll_s)
            except Exception as exc:  # keep the worker alive; the log has the traceback
                log.exception("worker loop error")
                self.last_error = str(exc)
                self._halt.wait(self.poll_s * 5)

    def run_once(self) -> bool:
        """Claim and run one queued evaluation; False when the queue was empty."""
        recover_stale(self.store, self.stale_after_s)
        doc = self.store.claim_next_evaluation(self.worker_id, now_utc())
        if doc is None:
            return False
        self.process(doc)
        return True

    def claim(self, evaluation_id: str) -> Doc:
        """Claim one specific queued evaluation (the CLI's in-process run)."""
        now = now_utc()
        doc = get_evaluation(self.store, evaluation_id)
        fields = {"status": "running", "worker_id": self.worker_id, "heartbeat_at": now}
        if doc.get("started_at") is None:
            fields["started_at"] = now
        if not self.store.transition_evaluation(evaluation_id, ["queued"], fields):
            raise JobError(
                f"evaluation {evaluation_id} is {doc['status']}, not queued; another worker may own it"
            )
        return get_evaluation(self.store, evaluation_id)

    # --- one evaluation -------------------------------------------------------------
    def process(self, doc: Doc, extra_hooks: RunHooks | None = None) -> RunSummary | None:
        eid = doc["id"]
        self.current = eid
        beat_stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(eid, beat_stop), daemon=True)
        beat.start()
        try:
            config = evaluation_config(doc)
            hooks = self._hooks(eid, extra_hooks)
            hooks.on_response = self._auto_judge(config, eid, hooks)
            self.store.append_event(eid, "info", f"worker {self.worker_id} started")
            try:
                summary = Runner(self.store, self.pool, hooks).execute(doc, config)
            finally:
                # Responses queued for a different local judge are judged now (or left for
                # `storybench judge` when the run was stopped).
                self._flush_judge(hooks.on_response)
            self._finish(eid, summary)
            return summary
        except StorybenchError as exc:
            self._fail(eid, str(exc))
        except Exception as exc:
            log.exception("evaluation %s crashed", eid)
            self._fail(eid, f"unexpected {type(exc).__name__}: {exc} (traceback in the log file)")
        finally:
            beat_stop.set()
            beat.join(2)
            self.current = None
        return None

    def _hooks(self, eid: str, extra: RunHooks | None) -> RunHooks:
        state = {"checked": 0.0, "stop": False, "progress_at": 0.0, "telemetry_failures": 0}

        def best_effort(what: str, write: Callable[[], Any]) -> None:
            # Console lines and live progress are telemetry: a store fault there (a lock held
            # too long, a MongoDB failover) is logged, and the task being generated goes on.
            try:
                write()
            except StoreError as exc:
                state["telemetry_failures"] += 1
                if state["telemetry_failures"] % 100 == 1:
                    log.warning(
                        "[%s] could not write %s (%d so far): %s", eid, what, state["telemetry_failures"], exc
                    )

        def event(level: str, message: str, **fields: Any) -> None:
            best_effort("a console line", lambda: self.store.append_event(eid, level, message, **fields))
            getattr(log, "warning" if level == "warning" else "error" if level == "error" else "info")(
                "[%s] %s", eid, message
            )
            if extra:
                extra.event(level, message, **fields)

        def should_stop() -> bool:
            now = time.monotonic()
            if now - state["checked"] >= 0.5:
                state["checked"] = now
                try:
                    current = self.store.get_evaluation(eid)
                except StoreError as exc:  # unreadable for a moment: keep the last answer
                    log.warning("[%s] could not read the stop flag: %s", eid, exc)
                else:
                    state["stop"] = current is None or current["status"] not in ("running",)
            return bool(state["stop"]) or self._halt.is_set()

        def progress(fields: dict[str, Any]) -> None:
            now = time.monotonic()
            final = fields.get("partial_text") == "" or fields.get("tokens_per_s") is None
            if extra:
                extra.progress(fields)
            if not final and now - state["progress_at"] < PROGRESS_EVERY_S:
                return
            state["progress_at"] = now

            def write() -> None:
                update = {"progress": fields | {"updated_at": now_utc().isoformat()}}
                update["completed_tasks"] = self.store.count_responses(eid, errors=False)
                update["failed_tasks"] = self.store.count_responses(eid, errors=True)
                self.store.update_evaluation(eid, update)

            best_effort("progress", write)

        return RunHooks(event=event, progress=progress, should_stop=should_stop)

    def _auto_judge(self, config: RunConfig, eid: str, hooks: RunHooks) -> Any:
        if not config.auto_evaluate:
            return None
        try:
            from .judge import auto_judge_hook
        except ImportError:
            hooks.event("warning", "auto_evaluate is on but the judge module is not available")
            return None
        return auto_judge_hook(self.store, config, eid, self.pool, hooks.event)

    def _flush_judge(self, hook: Any) -> None:
        if hook is None:
            return
        try:
            if hasattr(hook, "flush") and not self._halt.is_set():
                hook.flush()
        except StopRequested:
            pass
        finally:
            if hasattr(hook, "close"):
                hook.close()

    def _heartbeat(self, eid: str, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                self.store.update_evaluation(eid, {"heartbeat_at": now_utc()})
            except Exception:
                log.exception("heartbeat failed for %s", eid)

    def _finish(self, eid: str, summary: RunSummary) -> None:
        completed = self.store.count_responses(eid, errors=False)
        failed = self.store.count_responses(eid, errors=True)
        fields: Doc = {"completed_tasks": completed, "failed_tasks": failed, "finished_at": now_utc()}
        if summary.stopped:
            status, msg = "stopped", f"stopped: {completed} responses stored; resume to finish"
        elif failed:
            status, msg = "failed", f"finished with {failed} failed task(s) and {completed} stored responses"
            fields["error"] = f"{failed} task(s) failed; see the console"
        else:
            status, msg = "completed", f"completed: {completed} responses stored"
        fields["status"] = status
        self.store.transition_evaluation(eid, ["running", "stopping"], fields)
        self.store.append_event(eid, "warning" if status != "completed" else "info", msg)

    def _fail(self, eid: str, error: str) -> None:
        self.store.append_event(eid, "error", f"evaluation failed: {error}")
        self.store.transition_evaluation(
            eid, ["running", "stopping"], {"status": "failed", "error": error, "finished_at": now_utc()}
        )
