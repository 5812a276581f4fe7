"""'Judge now' on the Results page: judging a stored evaluation in the background.

Judging can take minutes (a local judge model loads, then scores every
response), longer than a page script should run. The dashboard owns one
JudgeJobs per server process; its threads call `judge.judge_evaluation`
through the tracker's own ModelPool, one job at a time (the pool holds one
model), and the page only polls `state(evaluation_id)`. Console lines go to
the evaluation's events, as any judging does, and are kept here for the page.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .. import audit
from ..access import Principal, require
from ..config import ModelSpec
from ..errors import StorybenchError
from ..runner import ModelPool
from ..store.base import Store

log = logging.getLogger(__name__)

KEEP_LINES = 200
ACTIVE_STATUSES = ("waiting", "running")


@dataclass(frozen=True)
class JudgeJobState:
    """One 'Judge now' job as the page shows it."""

    evaluation_id: str
    judge_label: str
    status: str = "waiting"  # waiting | running | done | stopped | failed
    judge_model: str = ""
    done: int = 0
    total: int = 0
    judged: int = 0
    failed: int = 0
    skipped: int = 0
    error: str | None = None
    lines: tuple[str, ...] = ()
    started_at: float = 0.0
    finished_at: float | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def fraction(self) -> float:
        if self.status == "done":
            return 1.0
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def progress_label(self) -> str:
        if self.status == "waiting":
            return f"{self.judge_label}: waiting for another judging job to finish"
        if self.status == "running" and not self.total:
            return f"{self.judge_label}: loading the judge"
        who = self.judge_model or self.judge_label
        return f"{who}: {self.done} / {self.total} judgements"

    @property
    def summary(self) -> str:
        """'6 judged, 1 failed, 0 already judged'."""
        return f"{self.judged} judged, {self.failed} failed, {self.skipped} already judged"


JudgeFn = Callable[..., Any]


def _default_judge() -> JudgeFn:
    from ..judge import judge_evaluation

    return judge_evaluation


class JudgeJobs:
    """Runs `judge_evaluation` jobs on background threads, one at a time, keyed by evaluation; thread-safe."""

    def __init__(self, judge: JudgeFn | None = None, pool: ModelPool | None = None) -> None:
        self._judge = judge or _default_judge()
        self._pool = pool or ModelPool()
        self._lock = threading.Lock()  # guards the dicts below
        self._one_at_a_time = threading.Lock()  # the pool holds one model
        self._states: dict[str, JudgeJobState] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._stops: dict[str, threading.Event] = {}
        self._stores: dict[str, Store] = {}

    def start(
        self,
        store: Store,
        evaluation_id: str,
        principal: Principal,
        judge_spec: ModelSpec | Sequence[ModelSpec] | None = None,
        label: str = "",
    ) -> JudgeJobState:
        """Start judging an evaluation for principal (operators; audited) unless a job for it is active.

        judge_spec None uses the evaluation's configured judge(s).
        """
        require(principal, "judge")
        with self._lock:
            current = self._states.get(evaluation_id)
            if current is not None and current.active:
                return current
            state = JudgeJobState(
                evaluation_id=evaluation_id, judge_label=label or "configured judge", started_at=time.time()
            )
            self._states[evaluation_id] = state
            self._stops[evaluation_id] = threading.Event()
            self._stores[evaluation_id] = store
            thread = threading.Thread(
                target=self._run,
                args=(store, evaluation_id, judge_spec),
                name=f"judge-{evaluation_id}",
                daemon=True,
            )
            self._threads[evaluation_id] = thread
        audit.record(store, principal, "judge", evaluation_id, {"judge": state.judge_label})
        thread.start()
        return state

    def state(self, evaluation_id: str) -> JudgeJobState | None:
        with self._lock:
            return self._states.get(evaluation_id)

    def stop(self, evaluation_id: str, principal: Principal) -> None:
        """Ask a job to stop after the judgement in progress (operators; audited)."""
        require(principal, "stop")
        with self._lock:
            flag = self._stops.get(evaluation_id)
            store = self._stores.get(evaluation_id)
            active = bool((state := self._states.get(evaluation_id)) and state.active)
        if flag is not None and active and store is not None:
            flag.set()
            audit.record(store, principal, "stop", evaluation_id, {"job": "judge"})

    @property
    def busy(self) -> bool:
        with self._lock:
            return any(s.active for s in self._states.values())

    def wait(self, evaluation_id: str | None = None, timeout: float = 30.0) -> None:
        """Join the job threads (one evaluation's or all); for tests and shutdown."""
        with self._lock:
            threads = [t for eid, t in self._threads.items() if evaluation_id in (None, eid)]
        for thread in threads:
            thread.join(timeout)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every job, wait for them and unload the judge model."""
        with self._lock:
            flags = list(self._stops.values())
        for flag in flags:
            flag.set()
        self.wait(timeout=timeout)
        with self._one_at_a_time:
            self._pool.release()

    # -- the thread

    def _update(self, evaluation_id: str, **fields: Any) -> None:
        with self._lock:
            self._states[evaluation_id] = replace(self._states[evaluation_id], **fields)

    def _add_line(self, evaluation_id: str, line: str) -> None:
        with self._lock:
            state = self._states[evaluation_id]
            lines = (*state.lines, line)[-KEEP_LINES:]
            self._states[evaluation_id] = replace(state, lines=lines)

    def _others_waiting(self, evaluation_id: str) -> bool:
        with self._lock:
            return any(s.status == "waiting" for e, s in self._states.items() if e != evaluation_id)

    def _run(
        self, store: Store, evaluation_id: str, judge_spec: ModelSpec | Sequence[ModelSpec] | None
    ) -> None:
        stop = self._stops[evaluation_id]

        def event(level: str, message: str, **fields: Any) -> None:
            store.append_event(evaluation_id, level, message, **fields)
            clock = time.strftime("%H:%M:%S")
            self._add_line(
                evaluation_id, f"{clock} {'' if level == 'info' else level.upper() + ' '}{message}"
            )

        def progress(info: dict[str, Any]) -> None:
            self._update(
                evaluation_id,
                judge_model=str(info.get("judge_model") or ""),
                done=int(info.get("done") or 0),
                total=int(info.get("total") or 0),
            )

        with self._one_at_a_time:
            if stop.is_set():
                self._update(evaluation_id, status="stopped", finished_at=time.time())
                return
            self._update(evaluation_id, status="running")
            try:
                summary = self._judge(
                    store,
                    evaluation_id,
                    judge_spec,
                    pool=self._pool,
                    event=event,
                    progress=progress,
                    should_stop=stop.is_set,
                )
            except StorybenchError as exc:
                self._update(evaluation_id, status="failed", error=str(exc), finished_at=time.time())
            except Exception as exc:  # a bug or an unmapped library error: the log has the traceback
                log.exception("judging evaluation %s crashed", evaluation_id)
                self._update(
                    evaluation_id,
                    status="failed",
                    error=f"unexpected {type(exc).__name__} while judging (details in the log file)",
                    finished_at=time.time(),
                )
            else:
                self._update(
                    evaluation_id,
                    status="stopped" if summary.stopped else "done",
                    judged=summary.judged,
                    failed=summary.failed,
                    skipped=summary.skipped,
                    finished_at=time.time(),
                )
            finally:
                # Keep the judge loaded only for a job already waiting for it.
                if not self._others_waiting(evaluation_id):
                    self._pool.release()
