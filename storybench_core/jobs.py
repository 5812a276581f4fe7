"""The Worker: claims queued evaluations (jobqueue.py) and runs them, one loaded model at a time.

A claim is a lease (owner + epoch). The worker heartbeats with the store's clock, checks the stop
flag and its lease between streamed tokens, and makes every write a compare-and-set on the lease:
progress, the outcome, and each response (LeasedWrites). When the lease is lost (the evaluation
was requeued after a stall and claimed by another worker, or reset) it stops at once and writes
nothing more. Queue operations are re-exported here for callers that predate jobqueue.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from . import job_kinds
from .config import RunConfig
from .errors import JobError, LeaseLost, StopRequested, StoreError, StorybenchError
from .executors import cluster_executor
from .jobqueue import (
    HEARTBEAT_S,
    STALE_AFTER_S,
    active_evaluation,
    default_worker_id,
    enqueue,
    evaluation_config,
    get_evaluation,
    heartbeat_age_s,
    queued_work,
    recover_stale,
    request_stop,
    requeue,
    reset,
    worker_alive,
    worker_process_alive,
)
from .runner import ModelPool, RunHooks, Runner, RunSummary, now_utc
from .store.base import Doc, Lease, Store

__all__ = [
    "HEARTBEAT_S", "STALE_AFTER_S", "LeasedWrites", "Worker", "active_evaluation", "default_worker_id",
    "enqueue", "evaluation_config", "get_evaluation", "heartbeat_age_s", "queued_work", "recover_stale",
    "request_stop", "requeue", "reset", "worker_alive", "worker_process_alive",
]  # fmt: skip

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5


class LeasedWrites:
    """The store as one lease holder sees it: a response write is a compare-and-set on the lease
    (LeaseLost once another worker owns the evaluation); every other call passes through."""

    def __init__(self, store: Store, lease: Lease) -> None:
        self._store = store
        self._lease = lease

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def upsert_response(self, doc: Doc, *, lease: Lease | None = None) -> str:
        return self._store.upsert_response(doc, lease=lease or self._lease)


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
        self.current: str | None = None  # the evaluation being worked on (a run's, or a job's)
        self.current_job: str | None = None  # the job being done, when it is not a run
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
        """Claim and do the oldest queued run or job (judging, pairwise); False when nothing is queued."""
        recover_stale(self.store, self.stale_after_s)
        job_kinds.recover_stale_jobs(self.store, self.stale_after_s)
        runs = self.store.list_evaluations(statuses=["queued"], brief=True)
        others = self.store.list_jobs(statuses=["queued"])
        never = datetime.min.replace(tzinfo=UTC)  # a document without created_at goes first, not nowhere
        order = sorted(
            [(d.get("created_at") or never, 0, d["id"]) for d in runs]
            + [(d.get("created_at") or never, 1, d["id"]) for d in others]
        )
        for _, is_job, row_id in order:
            if is_job:
                job = self.store.claim_next_job(self.worker_id, job_id=row_id)
                if job is not None:
                    self.process_job(job)
                    return True
            else:
                doc = self.store.claim_next_evaluation(self.worker_id, evaluation_id=row_id)
                if doc is not None:
                    self.process(doc)
                    return True
        return False  # empty, or another worker claimed each one first

    def claim(self, evaluation_id: str) -> Doc:
        """Claim one specific queued evaluation (the CLI's in-process run)."""
        doc = self.store.claim_next_evaluation(self.worker_id, evaluation_id=evaluation_id)
        if doc is None:
            status = get_evaluation(self.store, evaluation_id)["status"]
            raise JobError(f"evaluation {evaluation_id} is {status}, not queued; another worker may own it")
        return doc

    # --- one evaluation -------------------------------------------------------------
    def process(self, doc: Doc, extra_hooks: RunHooks | None = None) -> RunSummary | None:
        """Run one claimed evaluation under the lease its claim returned."""
        eid = doc["id"]
        lease = Lease.of(doc)
        if lease.owner != self.worker_id:
            raise JobError(f"evaluation {eid} is held by {lease.owner or 'nobody'}, not by {self.worker_id}")
        self.current = eid
        lost = threading.Event()
        beat, beat_stop = self._start_heartbeat(
            self.store.heartbeat, self.store.get_evaluation, eid, lease, lost
        )
        try:
            config = evaluation_config(doc)
            hooks = self._hooks(eid, lease, lost, extra_hooks)
            hooks.on_response = self._auto_judge(config, eid, hooks)
            self.store.append_event(eid, "info", f"worker {self.worker_id} started (lease {lease.epoch})")
            store = cast(Store, LeasedWrites(self.store, lease))
            try:
                cluster = cluster_executor()  # STORYBENCH_RAY_ADDRESS: the slots write under this lease
                if cluster is None:
                    summary = Runner(store, self.pool, hooks).execute(doc, config)
                else:
                    summary = cluster.execute(self.store, hooks, doc, config, lease=lease, guard=LeasedWrites)
            finally:
                # Responses queued for a different local judge are judged now (or left for
                # `storybench judge` when the run was stopped).
                if not lost.is_set():
                    self._flush_judge(hooks.on_response)
            if lost.is_set():
                self._lost(eid, lease)
                return summary
            self._finish(eid, lease, summary)
            return summary
        except LeaseLost:
            self._lost(eid, lease)
        except StorybenchError as exc:
            self._fail(eid, lease, str(exc))
        except Exception as exc:
            log.exception("evaluation %s crashed", eid)
            self._fail(eid, lease, f"unexpected {type(exc).__name__}: {exc} (traceback in the log file)")
        finally:
            beat_stop.set()
            beat.join(2)
            self.current = None
        return None

    # --- one job (judging, pairwise comparison) -----------------------------------------
    def process_job(self, doc: Doc) -> job_kinds.JobOutcome | None:
        """Do one claimed job under its lease: progress, console, Stop and loss of the lease as for runs."""
        job_id, eid = doc["id"], doc["evaluation_id"]
        lease = Lease.of(doc)
        self.current, self.current_job = eid, job_id
        lost = threading.Event()
        beat, beat_stop = self._start_heartbeat(
            self.store.heartbeat_job, self.store.get_job, job_id, lease, lost
        )
        state = {"progress_at": 0.0}
        what = f"{doc.get('kind')} job {job_id}"
        should_stop = self._stop_check(self.store.get_job, job_id, lease, lost, what)

        def event(level: str, message: str, **fields: Any) -> None:
            if not lost.is_set():
                try:
                    self.store.append_event(eid, level, message, job=job_id, **fields)
                except StoreError as exc:
                    log.warning("[%s] could not write a console line: %s", job_id, exc)

        def progress(info: dict[str, Any]) -> None:
            now = time.monotonic()
            done = info.get("done") == info.get("total")
            if lost.is_set() or (not done and now - state["progress_at"] < PROGRESS_EVERY_S):
                return
            state["progress_at"] = now
            try:
                if not self.store.update_job(job_id, {"progress": info}, lease=lease):
                    self._note_lost(job_id, lease, lost)
            except StoreError as exc:
                log.warning("[%s] could not write progress: %s", job_id, exc)

        try:
            event("info", f"{what} started by worker {self.worker_id} (lease {lease.epoch})")
            outcome = job_kinds.run_job(
                self.store, doc, self.pool, event=event, progress=progress, should_stop=should_stop
            )
            if lost.is_set():
                self._lost(job_id, lease)
                return outcome
            status = "stopped" if outcome.stopped else "completed"
            fields: Doc = {"status": status, "finished_at": now_utc(), "result": outcome.summary}
            if self.store.transition_job(job_id, ["running", "stopping"], fields, lease=lease):
                event("info" if status == "completed" else "warning", f"{what} {status}")
            return outcome
        except (LeaseLost, StopRequested):
            if lost.is_set():
                self._lost(job_id, lease)
            else:
                self.store.transition_job(
                    job_id,
                    ["running", "stopping"],
                    {"status": "stopped", "finished_at": now_utc()},
                    lease=lease,
                )
        except StorybenchError as exc:
            self._fail_job(job_id, eid, lease, str(exc))
        except Exception as exc:
            log.exception("%s crashed", what)
            self._fail_job(
                job_id, eid, lease, f"unexpected {type(exc).__name__}: {exc} (traceback in the log file)"
            )
        finally:
            beat_stop.set()
            beat.join(2)
            self.current = self.current_job = None
            self.pool.release()  # a judge is not kept loaded for the next run
        return None

    def _fail_job(self, job_id: str, eid: str, lease: Lease, error: str) -> None:
        fields = {"status": "failed", "error": error, "finished_at": now_utc()}
        if self.store.transition_job(job_id, ["running", "stopping"], fields, lease=lease):
            self.store.append_event(eid, "error", f"job {job_id} failed: {error}", job=job_id)

    def _start_heartbeat(
        self,
        beat: Callable[[str, Lease], bool],
        read: Callable[[str], Doc | None],
        row_id: str,
        lease: Lease,
        lost: threading.Event,
    ) -> tuple[threading.Thread, threading.Event]:
        """The heartbeat thread of one run or job, and the event that ends it."""
        stop = threading.Event()
        thread = threading.Thread(
            target=self._heartbeat, args=(beat, read, row_id, lease, stop, lost), daemon=True
        )
        thread.start()
        return thread, stop

    def _stop_check(
        self, read: Callable[[str], Doc | None], row_id: str, lease: Lease, lost: threading.Event, what: str
    ) -> Callable[[], bool]:
        """The one stop signal of a run or job: its status re-read at most every 0.5 s (a read that fails
        keeps the last answer), the worker halting, or the lease lost (raises LeaseLost)."""
        state = {"checked": 0.0, "stop": False}

        def should_stop() -> bool:
            now = time.monotonic()
            if now - state["checked"] >= 0.5:
                state["checked"] = now
                try:
                    current = read(row_id)
                except StoreError as exc:  # unreadable for a moment: keep the last answer
                    log.warning("[%s] could not read the stop flag: %s", row_id, exc)
                else:
                    if not lease.held_in(current):
                        self._note_lost(row_id, lease, lost)
                    state["stop"] = current is None or current["status"] != "running"
            if lost.is_set():
                raise LeaseLost(f"{self.worker_id} lost {what}")
            return bool(state["stop"]) or self._halt.is_set()

        return should_stop

    def _hooks(self, eid: str, lease: Lease, lost: threading.Event, extra: RunHooks | None) -> RunHooks:
        state = {"progress_at": 0.0, "telemetry_failures": 0}

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
            if lost.is_set():
                return  # the console belongs to the new owner now
            best_effort("a console line", lambda: self.store.append_event(eid, level, message, **fields))
            getattr(log, "warning" if level == "warning" else "error" if level == "error" else "info")(
                "[%s] %s", eid, message
            )
            if extra:
                extra.event(level, message, **fields)

        should_stop = self._stop_check(
            lambda row_id: self.store.get_evaluation(row_id, brief=True),
            eid,
            lease,
            lost,
            f"evaluation {eid}",
        )

        def progress(fields: dict[str, Any]) -> None:
            now = time.monotonic()
            final = fields.get("partial_text") == "" or fields.get("tokens_per_s") is None
            if extra:
                extra.progress(fields)
            if lost.is_set() or (not final and now - state["progress_at"] < PROGRESS_EVERY_S):
                return
            state["progress_at"] = now

            def write() -> None:
                update: Doc = {"progress": fields | {"updated_at": now_utc().isoformat()}}
                update["completed_tasks"] = self.store.count_responses(eid, errors=False)
                update["failed_tasks"] = self.store.count_responses(eid, errors=True)
                if not self.store.update_evaluation(eid, update, lease=lease):
                    self._note_lost(eid, lease, lost)

            best_effort("progress", write)

        return RunHooks(event=event, progress=progress, should_stop=should_stop)

    def _note_lost(self, eid: str, lease: Lease, lost: threading.Event) -> None:
        if not lost.is_set():
            lost.set()
            log.warning(
                "[%s] %s lost its lease (epoch %d): stopping, writing nothing more",
                eid,
                lease.owner,
                lease.epoch,
            )

    def _auto_judge(self, config: RunConfig, eid: str, hooks: RunHooks) -> Any:
        if not config.auto_evaluate:
            return None
        try:
            from .auto_judge import auto_judge_hook
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

    def _heartbeat(
        self,
        beat: Callable[[str, Lease], bool],
        read: Callable[[str], Doc | None],
        eid: str,
        lease: Lease,
        stop: threading.Event,
        lost: threading.Event,
    ) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                if not beat(eid, lease):
                    current = read(eid)
                    if not lease.held_in(current):
                        self._note_lost(eid, lease, lost)
                        return
            except Exception:
                log.exception("heartbeat failed for %s", eid)

    def _lost(self, eid: str, lease: Lease) -> None:
        log.warning("[%s] %s gave it up: its lease (epoch %d) was taken over", eid, lease.owner, lease.epoch)

    def _finish(self, eid: str, lease: Lease, summary: RunSummary) -> None:
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
        if self.store.transition_evaluation(eid, ["running", "stopping"], fields, lease=lease):
            self.store.append_event(eid, "warning" if status != "completed" else "info", msg)
        else:
            self._lost(eid, lease)

    def _fail(self, eid: str, lease: Lease, error: str) -> None:
        if self.store.transition_evaluation(
            eid,
            ["running", "stopping"],
            {"status": "failed", "error": error, "finished_at": now_utc()},
            lease=lease,
        ):
            self.store.append_event(eid, "error", f"evaluation failed: {error}")
        else:
            self._lost(eid, lease)
