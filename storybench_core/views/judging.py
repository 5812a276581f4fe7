"""'Judge now' on the Results page: a judge job in the store's queue, as the page shows it.

Judging can take minutes (a local judge model loads, then scores every response), longer than a
page script should run. "Judge now" queues a `judge` job (job_kinds.py); the worker that runs
evaluations claims it and judges through its one-model-at-a-time pool. The page only reads the
job and its console lines (the evaluation's events tagged with the job id), so a second viewer,
a refresh, a restarted server or a `storybench worker` all see the same job. Statuses are the
store's job statuses (store.base.ACTIVE_STATUSES and the finished ones), not a second set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import job_kinds
from ..access import Principal
from ..config import ModelSpec
from ..store.base import ACTIVE_STATUSES, Doc, Store

KEEP_LINES = 200


@dataclass(frozen=True)
class JudgeJobState:
    """One judge job as the page shows it."""

    job_id: str
    evaluation_id: str
    judge_label: str
    status: str = "queued"  # a job status: queued | running | stopping | completed | stopped | failed
    judge_model: str = ""
    done: int = 0
    total: int = 0
    judged: int = 0
    failed: int = 0
    skipped: int = 0
    error: str | None = None
    lines: tuple[str, ...] = ()
    worker_id: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def fraction(self) -> float:
        if self.status == "completed":
            return 1.0
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def progress_label(self) -> str:
        if self.status == "queued":
            return f"{self.judge_label}: queued; the worker takes it after the run or job before it"
        if self.status == "stopping":
            return f"{self.judge_label}: stopping after the judgement in progress"
        if not self.total:
            return f"{self.judge_label}: loading the judge"
        who = self.judge_model or self.judge_label
        return f"{who}: {self.done} / {self.total} judgements"

    @property
    def summary(self) -> str:
        """'6 judged, 1 failed, 0 already judged'."""
        return f"{self.judged} judged, {self.failed} failed, {self.skipped} already judged"


def _line(event: Doc) -> str:
    ts = event.get("ts")
    clock = ts.strftime("%H:%M:%S") if ts is not None else ""
    level = event.get("level") or "info"
    return f"{clock} {'' if level == 'info' else level.upper() + ' '}{event.get('message') or ''}"


def job_state(store: Store, job: Doc, *, with_lines: bool = True) -> JudgeJobState:
    """The page's view of one stored judge job (its console lines read from the evaluation's events)."""
    progress = job.get("progress") or {}
    result = job.get("result") or {}
    lines: tuple[str, ...] = ()
    if with_lines:
        start = max(0, int(job.get("events_from") or 1) - 1)
        events = [
            e for e in store.list_events(job["evaluation_id"], after_seq=start) if e.get("job") == job["id"]
        ]
        lines = tuple(_line(e) for e in events[-KEEP_LINES:])
    return JudgeJobState(
        job_id=job["id"],
        evaluation_id=job["evaluation_id"],
        judge_label=job.get("label") or "configured judge",
        status=job.get("status") or "queued",
        judge_model=str(progress.get("judge_model") or ""),
        done=int(progress.get("done") or 0),
        total=int(progress.get("total") or 0),
        judged=int(result.get("judged") or 0),
        failed=int(result.get("failed") or 0),
        skipped=int(result.get("skipped") or 0),
        error=job.get("error"),
        lines=lines,
        worker_id=job.get("worker_id"),
    )


class JudgeJobs:
    """The page's handle on judge jobs in one store: start, read, stop (roles checked in job_kinds)."""

    def __init__(self, store: Store | Callable[[], Store]) -> None:
        self._store = store

    @property
    def store(self) -> Store:
        return self._store() if callable(self._store) else self._store

    def start(
        self,
        store: Store | None,
        evaluation_id: str,
        principal: Principal,
        judge_spec: ModelSpec | None = None,
        label: str = "",
    ) -> JudgeJobState:
        """Queue judging of an evaluation for principal (operators; audited), unless one is active."""
        store = store or self.store
        job_id, _created = job_kinds.enqueue_job(
            store, "judge", evaluation_id, principal, judge=judge_spec, label=label
        )
        return job_state(store, job_kinds.get_job(store, job_id))

    def state(self, evaluation_id: str) -> JudgeJobState | None:
        job = job_kinds.latest_job(self.store, evaluation_id, "judge")
        return None if job is None else job_state(self.store, job)

    def stop(self, evaluation_id: str, principal: Principal) -> None:
        """Ask the active judge job of an evaluation to stop after the judgement in progress."""
        job = job_kinds.latest_job(self.store, evaluation_id, "judge")
        if job is not None and job.get("status") in ACTIVE_STATUSES:
            job_kinds.request_stop_job(self.store, job["id"], principal)
