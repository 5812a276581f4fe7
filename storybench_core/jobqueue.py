"""The job queue in the store: queue, stop, resume and reset evaluations; who is stale.

Start = insert an evaluation with status `queued`. Any worker (the thread the dashboard owns, or
`storybench worker` in another process; jobs.py) claims it atomically with a lease (owner +
epoch: every claim increments the evaluation's `lease`), heartbeats with the store's clock, and
makes every write a compare-and-set on its lease, so a worker that lost its claim stops and
writes nothing more. A `running` evaluation whose heartbeat is stale by the store's clock, or
whose worker process is gone from this host, is requeued; the runner then does only the missing
tasks.

Statuses: queued → running → completed | failed | stopped;
running → stopping (user) → stopped; stopped/failed → queued (resume).
Queue, stop, resume and reset take the acting principal: its role is checked here (not only in a
page), an operator's queued work is capped, and each change is recorded in the audit trail.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import datetime
from uuid import uuid4

from . import audit
from .access import AccessPolicy, Principal, check_queue_limits, current_policy, require
from .config import RunConfig, config_hash, config_to_dict, parse_config
from .errors import JobError
from .runner import now_utc, plan_tasks
from .store.base import ACTIVE_STATUSES, Doc, Lease, Store

HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0


def queued_work(store: Store, principal: Principal) -> tuple[int, int]:
    """(evaluations, tasks not yet done) the principal has queued or running."""
    active = store.list_evaluations(statuses=ACTIVE_STATUSES, brief=True)
    mine = [d for d in active if d.get("queued_by") == principal.id]
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
        # What the queue table shows, so its poll reads brief documents (no config).
        "summary": {"models": [m.display_name for m in config.models], "sequences": list(config.sequences)},
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


def reset(
    store: Store, evaluation_id: str, principal: Principal, *, stale_after_s: float = STALE_AFTER_S
) -> None:
    """Put a running/stopping evaluation whose worker is gone back to `stopped`.

    Refused while its worker is alive (it heartbeats, or its process exists on this host): a live
    run is stopped with Stop, and a reset would let a second worker generate the same tasks.
    """
    require(principal, "reset")
    doc = get_evaluation(store, evaluation_id)
    if doc["status"] not in ("running", "stopping"):
        raise JobError(f"evaluation {evaluation_id} is {doc['status']}, not running; nothing to reset")
    alive, why = worker_alive(store, doc, stale_after_s)
    if alive:
        raise JobError(
            f"evaluation {evaluation_id} is still being worked on by {doc.get('worker_id')} ({why}); "
            "use Stop. Reset is for a run whose worker died: it becomes possible once the worker "
            f"has been silent for {stale_after_s:.0f} s."
        )
    lease = Lease.of(doc)
    if not store.transition_evaluation(
        evaluation_id,
        ["running", "stopping"],
        {"status": "stopped", "worker_id": None, "finished_at": now_utc()},
        lease=lease,
    ):
        raise JobError(f"evaluation {evaluation_id} changed while resetting it; look again and retry")
    store.append_event(evaluation_id, "warning", f"reset by {principal.id} ({why}); resume to finish it")
    audit.record(
        store,
        principal,
        "reset",
        evaluation_id,
        {"from_status": doc["status"], "worker_id": doc.get("worker_id"), "lease": lease.epoch},
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


def heartbeat_age_s(store: Store, doc: Doc, now: datetime | None = None) -> float | None:
    """Seconds since the evaluation's last heartbeat by the store's clock (None: never beat)."""
    beat = doc.get("heartbeat_at")
    if beat is None:
        return None
    return ((now or store.clock()) - beat).total_seconds()


def worker_alive(
    store: Store, doc: Doc, stale_after_s: float = STALE_AFTER_S, now: datetime | None = None
) -> tuple[bool, str]:
    """Whether the worker holding a running evaluation is alive, and why we think so.

    Times are the store's, never this host's: a host whose clock runs fast cannot declare
    everyone else's workers dead.
    """
    if worker_process_alive(doc.get("worker_id")) is False:
        return False, f"worker process {doc.get('worker_id')} is gone from this host"
    age = heartbeat_age_s(store, doc, now)
    if age is None:
        return False, "its worker never sent a heartbeat"
    if age > stale_after_s:
        return False, f"no heartbeat for {age:.0f} s"
    return True, f"last heartbeat {max(age, 0):.0f} s ago"


def recover_dead(
    store: Store,
    docs: list[Doc],
    transition: Callable[..., bool],
    note: Callable[[Doc, str, str], None],
    stale_after_s: float = STALE_AFTER_S,
) -> list[str]:
    """Of these running/stopping runs or jobs, requeue those whose worker is gone (stale by the
    store's clock, or its local process exited); a stopping one becomes stopped. Each change is a
    compare-and-set on the dead worker's lease, so a worker that beats in between keeps its job.
    note(doc, why, new_status) records each change; returns the ids changed."""
    recovered = []
    now = store.clock() if docs else None
    for doc in docs:
        alive, why = worker_alive(store, doc, stale_after_s, now)
        if alive:
            continue
        new = "queued" if doc["status"] == "running" else "stopped"
        if transition(doc["id"], [doc["status"]], {"status": new, "worker_id": None}, lease=Lease.of(doc)):
            note(doc, why, new)
            recovered.append(doc["id"])
    return recovered


def recover_stale(store: Store, stale_after_s: float = STALE_AFTER_S) -> list[str]:
    """Requeue running evaluations whose worker is gone (recover_dead)."""

    def note(doc: Doc, why: str, new: str) -> None:
        store.append_event(doc["id"], "warning", f"worker {doc.get('worker_id')}: {why}; {new}")

    docs = store.list_evaluations(statuses=["running", "stopping"], brief=True)
    return recover_dead(store, docs, store.transition_evaluation, note, stale_after_s)


def active_evaluation(store: Store) -> Doc | None:
    """The evaluation a viewer most likely wants: running first, then the oldest queued."""
    for statuses in (["running", "stopping"], ["queued"]):
        docs = store.list_evaluations(statuses=statuses, brief=True)
        if docs:
            return get_evaluation(store, docs[-1]["id"])
    return None


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:6]}"
