"""Jobs other than runs — judging, pairwise comparison, judge calibration — queued in the store like runs.

"Judge now" on the Results page, `storybench judge --queue` and `storybench compare-judge
--queue` insert a job; the same Worker that runs evaluations claims it with a lease, through the
same one-model-at-a-time pool, so a dashboard never holds a candidate and a judge model at
once, and every viewer, server and `storybench worker` sees the same job, its progress, and its
console lines (the evaluation's events, tagged with the job's id). Stop, resume and recovery of
a job whose worker died work exactly as for runs; judging skips what is already judged, so a
resumed job does only what is missing.

Job statuses: queued → running → completed | failed | stopped; running → stopping → stopped;
stopped/failed → queued (resume).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import audit
from .access import Principal, require
from .config import ModelSpec
from .errors import ConfigError, JobError
from .jobqueue import STALE_AFTER_S, get_evaluation, recover_dead
from .runner import ModelPool, now_utc
from .store.base import JOB_KINDS, Doc, Store

ACTIVE_JOB_STATUSES = ("queued", "running", "stopping")
MAX_ACTIVE_JOBS_PER_EVALUATION = 1  # per kind: a second "Judge now" shows the first one

EventFn = Callable[..., None]
ProgressFn = Callable[[dict[str, Any]], None]
StopFn = Callable[[], bool]


def _spec_dict(spec: ModelSpec | None) -> dict[str, Any] | None:
    return None if spec is None else spec.model_dump(mode="json", exclude_none=True)


def _spec_from(params: dict[str, Any], key: str = "judge") -> ModelSpec | None:
    raw = params.get(key)
    if raw is None:
        return None
    try:
        return ModelSpec.model_validate(raw)
    except ValueError as exc:
        raise ConfigError(f"the queued job's {key} model is invalid: {exc}") from exc


def enqueue_job(
    store: Store,
    kind: str,
    evaluation_id: str,
    principal: Principal,
    *,
    judge: ModelSpec | None = None,
    label: str = "",
    **params: Any,
) -> tuple[str, bool]:
    """Queue a job of `kind` on an evaluation for principal (operators; audited).

    Returns (job id, created): an active job of the same kind on that evaluation is returned
    instead of queueing a second one.
    """
    if kind not in JOB_KINDS:
        raise JobError(f"unknown job kind '{kind}'; known: {', '.join(JOB_KINDS)}")
    require(principal, "judge")
    get_evaluation(store, evaluation_id)  # a clear error for an unknown id
    active = [j for j in store.list_jobs(evaluation_id=evaluation_id, statuses=ACTIVE_JOB_STATUSES)]
    same = [j for j in active if j.get("kind") == kind]
    if len(same) >= MAX_ACTIVE_JOBS_PER_EVALUATION:
        return same[0]["id"], False
    doc = {
        "kind": kind,
        "evaluation_id": evaluation_id,
        "label": label or (judge.display_name if judge else "configured judge"),
        "params": {"judge": _spec_dict(judge), **params},
        "status": "queued",
        "created_at": now_utc(),
        "queued_by": principal.id,
        "progress": {},
    }
    job_id = store.create_job(doc)
    seq = store.append_event(
        evaluation_id, "info", f"{kind} job {job_id} queued by {principal.id}", job=job_id
    )
    # Where its console lines start in the evaluation's events: a viewer reads from here, not all of them.
    store.update_job(job_id, {"events_from": seq})
    # Every kind is judging (rubric, pairwise, calibration): one audited action, the kind in the details.
    audit.record(
        store,
        principal,
        "judge",
        evaluation_id,
        {"job": job_id, "kind": kind, "judge": doc["label"], **params},
    )
    return job_id, True


def get_job(store: Store, job_id: str) -> Doc:
    doc = store.get_job(job_id)
    if doc is None:
        raise JobError(f"no job with id '{job_id}' in {store.describe()}")
    return doc


def latest_job(store: Store, evaluation_id: str, kind: str | None = None) -> Doc | None:
    """The newest job (of a kind) on an evaluation, active or not."""
    for doc in store.list_jobs(evaluation_id=evaluation_id, limit=20):
        if kind is None or doc.get("kind") == kind:
            return doc
    return None


def request_stop_job(store: Store, job_id: str, principal: Principal) -> str:
    """Ask a job to stop (after the judgement in progress); returns the new status."""
    require(principal, "stop")
    doc = get_job(store, job_id)
    if store.transition_job(job_id, ["queued"], {"status": "stopped", "finished_at": now_utc()}):
        new = "stopped"
    elif store.transition_job(job_id, ["running"], {"status": "stopping"}):
        new = "stopping"
    else:
        return get_job(store, job_id)["status"]
    store.append_event(
        doc["evaluation_id"],
        "warning",
        f"{doc['kind']} job {job_id}: stop requested by {principal.id}",
        job=job_id,
    )
    audit.record(store, principal, "stop", doc["evaluation_id"], {"job": job_id, "status": new})
    return new


def requeue_job(store: Store, job_id: str, principal: Principal) -> None:
    """Resume a stopped or failed job: it does only what is still missing."""
    require(principal, "resume")
    doc = get_job(store, job_id)
    if not store.transition_job(
        job_id,
        ["stopped", "failed"],
        {"status": "queued", "finished_at": None, "error": None, "worker_id": None},
    ):
        raise JobError(f"job {job_id} is {doc['status']}; only stopped or failed jobs can be resumed")
    store.append_event(
        doc["evaluation_id"], "info", f"{doc['kind']} job {job_id} resumed by {principal.id}", job=job_id
    )
    audit.record(store, principal, "resume", doc["evaluation_id"], {"job": job_id})


def recover_stale_jobs(store: Store, stale_after_s: float = STALE_AFTER_S) -> list[str]:
    """Requeue running jobs whose worker is gone (jobqueue.recover_dead, as for runs)."""

    def note(doc: Doc, why: str, new: str) -> None:
        message = f"{doc['kind']} job {doc['id']}: {why}; {new}"
        store.append_event(doc["evaluation_id"], "warning", message, job=doc["id"])

    docs = store.list_jobs(statuses=["running", "stopping"])
    return recover_dead(store, docs, store.transition_job, note, stale_after_s)


@dataclass
class JobOutcome:
    """What a job handler reports back to the worker."""

    stopped: bool = False
    failed: int = 0
    summary: dict[str, Any] | None = None


def run_job(
    store: Store,
    doc: Doc,
    pool: ModelPool,
    *,
    event: EventFn,
    progress: ProgressFn,
    should_stop: StopFn,
) -> JobOutcome:
    """Do one claimed job through the worker's pool (one model at a time)."""
    kind = doc.get("kind")
    params = dict(doc.get("params") or {})
    spec = _spec_from(params)
    eid = doc["evaluation_id"]
    if kind == "judge":
        from .judge import judge_evaluation

        cfg = None
        if params.get("attempts") is not None:
            config = _evaluation_judge_config(store, eid)
            cfg = config.model_copy(update={"attempts": int(params["attempts"])})
        result = judge_evaluation(
            store, eid, spec, cfg, pool, event=event, progress=progress, should_stop=should_stop
        )
        return JobOutcome(
            stopped=result.stopped,
            failed=result.failed,
            summary={"judged": result.judged, "failed": result.failed, "skipped": result.skipped},
        )
    if kind == "pairwise":
        from .pairwise import compare_judge_evaluation

        options = {
            k: params[k] for k in ("budget", "budget_chars", "max_tokens") if params.get(k) is not None
        }
        compared = compare_judge_evaluation(
            store, eid, spec, pool, event=event, should_stop=should_stop, **options
        )
        stopped = compared.stop_reason == "stopped"
        return JobOutcome(
            stopped=stopped,
            failed=compared.failed,
            summary={
                "calls": compared.calls,
                "verdicts": compared.verdicts,
                "failed": compared.failed,
                "stop_reason": compared.stop_reason,
            },
        )
    if kind == "calibrate":
        from .calibration import calibrate_judge

        options = {
            k: params[k] for k in ("rungs", "attempts", "ladders", "modes") if params.get(k) is not None
        }
        card = calibrate_judge(
            store, eid, spec, pool, event=event, progress=progress, should_stop=should_stop, **options
        )
        return JobOutcome(summary=card)
    raise JobError(f"job {doc['id']} has an unknown kind '{kind}'; known: {', '.join(JOB_KINDS)}")


def _evaluation_judge_config(store: Store, evaluation_id: str) -> Any:
    from .jobqueue import evaluation_config

    return evaluation_config(get_evaluation(store, evaluation_id)).judge
