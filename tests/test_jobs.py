"""Jobs and the worker on the scripted fake backend with a real SQLite file."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from storybench_core import jobs
from storybench_core.access import LOCAL_ADMIN
from storybench_core.config import parse_config
from storybench_core.errors import JobError, StoreError
from storybench_core.runner import now_utc
from storybench_core.store.sqlite import SQLiteStore


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "jobs.db")
    yield s
    s.close()


def config(delay_s=0.0, runs=1, sequences=("film",)):
    return parse_config(
        {
            "models": [{"kind": "fake", "options": {"delay_s": delay_s, "words": 30}}],
            "sequences": list(sequences),
            "generation": {"runs": runs, "max_tokens": 64},
        }
    )


def wait_for(predicate, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_worker_runs_queued_evaluation_to_completion(store):
    eid = jobs.enqueue(store, config(runs=2), LOCAL_ADMIN)
    worker = jobs.Worker(store, poll_s=0.05)
    assert worker.run_once()
    doc = store.get_evaluation(eid)
    assert doc["status"] == "completed"
    assert doc["completed_tasks"] == 6 and doc["failed_tasks"] == 0 and doc["total_tasks"] == 6
    assert doc["finished_at"] >= doc["started_at"]
    messages = [e["message"] for e in store.list_events(eid)]
    assert messages[0].startswith("queued")
    assert sum(m.startswith("stored ") for m in messages) == 6
    assert messages[-1].startswith("completed")
    assert not worker.run_once()  # queue empty


def test_stop_takes_effect_within_the_current_batch(store):
    eid = jobs.enqueue(store, config(delay_s=0.02, runs=3), LOCAL_ADMIN)
    worker = jobs.Worker(store, poll_s=0.05).start()
    try:
        assert wait_for(lambda: store.get_evaluation(eid)["status"] == "running")
        assert wait_for(lambda: store.count_responses(eid) >= 1)
        stored_when_asked = store.count_responses(eid)
        assert jobs.request_stop(store, eid, LOCAL_ADMIN) == "stopping"
        # 60 s only guards against a hang; how soon it stops is counted in responses below.
        assert wait_for(lambda: store.get_evaluation(eid)["status"] == "stopped", timeout=60)
    finally:
        worker.shutdown()
    stored = store.count_responses(eid)
    # The worker checks for a stop every 0.5 s (store) and the runner every 0.5 s (tokens); at 0.02 s a
    # word, at most ~50 more words run before it sees it: the runs of the batch in progress, no more.
    assert stored - stored_when_asked <= 3
    assert 1 <= stored < 9
    # Resume finishes only the missing tasks.
    jobs.requeue(store, eid, LOCAL_ADMIN)
    assert jobs.Worker(store).run_once()
    assert store.get_evaluation(eid)["status"] == "completed"
    docs = store.list_responses(eid)
    assert len(docs) == 9 and len({d["task_key"] for d in docs}) == 9


def test_stop_of_queued_evaluation(store):
    eid = jobs.enqueue(store, config(), LOCAL_ADMIN)
    assert jobs.request_stop(store, eid, LOCAL_ADMIN) == "stopped"
    assert not jobs.Worker(store).run_once()


def test_stale_running_evaluation_is_requeued_and_resumed(store):
    eid = jobs.enqueue(store, config(runs=2), LOCAL_ADMIN)
    claimed = store.claim_next_evaluation("dead-worker")
    assert claimed["id"] == eid
    store.update_evaluation(eid, {"heartbeat_at": store.clock() - timedelta(minutes=10)})
    assert jobs.recover_stale(store, stale_after_s=60) == [eid]
    assert store.get_evaluation(eid)["status"] == "queued"
    assert jobs.Worker(store).run_once()
    assert store.get_evaluation(eid)["status"] == "completed"


def test_reset_and_requeue_rules(store):
    eid = jobs.enqueue(store, config(), LOCAL_ADMIN)
    with pytest.raises(JobError, match="not running"):
        jobs.reset(store, eid, LOCAL_ADMIN)
    store.claim_next_evaluation("w")
    with pytest.raises(JobError, match="still being worked on.*use Stop"):
        jobs.reset(store, eid, LOCAL_ADMIN)  # its worker heartbeats: a live run is stopped, not reset
    store.update_evaluation(eid, {"heartbeat_at": store.clock() - timedelta(seconds=61)})
    jobs.reset(store, eid, LOCAL_ADMIN)
    assert store.get_evaluation(eid)["status"] == "stopped"
    with pytest.raises(JobError, match="no evaluation with id"):
        jobs.get_evaluation(store, "nope")


def test_two_workers_never_share_an_evaluation(store, tmp_path):
    ids = [jobs.enqueue(store, config(runs=1), LOCAL_ADMIN) for _ in range(4)]
    other = SQLiteStore(tmp_path / "jobs.db")
    workers = [jobs.Worker(store, "w1", poll_s=0.02), jobs.Worker(other, "w2", poll_s=0.02)]
    threads = [threading.Thread(target=lambda w=w: [w.run_once() for _ in range(4)]) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for eid in ids:
        doc = store.get_evaluation(eid)
        assert doc["status"] == "completed"
        assert store.count_responses(eid) == 3
    other.close()


def test_bad_model_fails_the_tasks_not_the_worker(store, tmp_path):
    bad = parse_config(
        {
            "models": [{"kind": "path", "path": str(tmp_path / "missing.gguf")}],
            "sequences": ["film"],
            "generation": {"runs": 1},
        }
    )
    eid = jobs.enqueue(store, bad, LOCAL_ADMIN)
    jobs.Worker(store).run_once()
    doc = store.get_evaluation(eid)
    assert doc["status"] == "failed" and doc["failed_tasks"] == 3
    errors = [e["message"] for e in store.list_events(eid) if e["level"] == "error"]
    assert any("missing.gguf" in m for m in errors)


def test_evaluation_of_a_dead_local_process_is_recovered_at_once(store):
    import socket
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    eid = jobs.enqueue(store, config(), LOCAL_ADMIN)
    store.claim_next_evaluation(f"{socket.gethostname()}:{proc.pid}:abc")
    assert jobs.worker_process_alive(f"{socket.gethostname()}:{proc.pid}:abc") is False
    assert jobs.worker_process_alive("otherhost:1:abc") is None
    assert jobs.recover_stale(store) == [eid]


class _FlakyTelemetryStore:
    """The real store, except that every live-progress write and some console lines fail (a lock held too long)."""

    def __init__(self, inner):
        self.inner = inner
        self.failed_writes = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def update_evaluation(self, evaluation_id, fields, *, lease=None):
        if "progress" in fields:
            self.failed_writes += 1
            raise StoreError("SQLite store: database is locked (simulated)")
        return self.inner.update_evaluation(evaluation_id, fields, lease=lease)

    def append_event(self, evaluation_id, level, message, **fields):
        if message.startswith("generating"):
            self.failed_writes += 1
            raise StoreError("SQLite store: database is locked (simulated)")
        return self.inner.append_event(evaluation_id, level, message, **fields)


def test_a_failed_progress_write_does_not_fail_the_task(store):
    eid = jobs.enqueue(store, config(delay_s=0.02), LOCAL_ADMIN)
    flaky = _FlakyTelemetryStore(store)
    assert jobs.Worker(flaky, poll_s=0.05).run_once()
    doc = store.get_evaluation(eid)
    assert flaky.failed_writes >= 6  # at least the opening progress write and console line of each turn
    assert doc["status"] == "completed" and doc["failed_tasks"] == 0
    responses = store.list_responses(eid)
    assert len(responses) == 3 and not any(r.get("error") for r in responses)


# --- leases: one job, one worker -------------------------------------------------------


class _SkewedClockStore:
    """The real store seen from a host whose own clock runs an hour fast: only now_utc() is off.

    Staleness must use the store's clock, so this host may not requeue a run that heartbeats.
    """

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_fast_clock_on_one_host_does_not_requeue_a_live_run(store, monkeypatch):
    eid = jobs.enqueue(store, config(), LOCAL_ADMIN)
    store.claim_next_evaluation("otherhost:1:live")  # another host's worker, just beat
    future = now_utc() + timedelta(hours=1)
    monkeypatch.setattr(jobs, "now_utc", lambda: future)
    import storybench_core.jobqueue as jobqueue

    monkeypatch.setattr(jobqueue, "now_utc", lambda: future)
    assert jobs.recover_stale(_SkewedClockStore(store), stale_after_s=60) == []
    assert store.get_evaluation(eid)["status"] == "running"
    alive, why = jobs.worker_alive(store, store.get_evaluation(eid))
    assert alive and "last heartbeat" in why


def test_a_worker_that_lost_its_lease_stops_and_writes_nothing(store):
    """Worker A stalls (simulated: its evaluation is requeued under it, as recover_stale does after 60 s
    of silence) and worker B claims it; A must stop within a stop check and write no response or outcome,
    B must generate every task exactly once."""
    eid = jobs.enqueue(store, config(delay_s=0.05, runs=2), LOCAL_ADMIN)
    a = jobs.Worker(store, "host:1:a", poll_s=0.05)
    doc = store.claim_next_evaluation(a.worker_id)
    a_stored: list[str] = []
    original = store.upsert_response

    def spy(doc, *, lease=None):
        rid = original(doc, lease=lease)
        if lease is not None and lease.owner == a.worker_id:
            a_stored.append(doc["task_key"])
        return rid

    store.upsert_response = spy
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("summary", a.process(doc)))
    thread.start()
    assert wait_for(lambda: store.count_responses(eid) >= 1)
    # The takeover: requeued under A's old lease, claimed by B with a new one.
    assert store.transition_evaluation(
        eid, ["running"], {"status": "queued", "worker_id": None}, lease=jobs.Lease.of(doc)
    )
    b = jobs.Worker(store, "host:2:b", poll_s=0.05)
    b_doc = store.claim_next_evaluation(b.worker_id)
    assert b_doc["lease"] == doc["lease"] + 1
    a_count_at_takeover = len(a_stored)
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert len(a_stored) <= a_count_at_takeover + 1  # at most the write already past its check
    b.process(b_doc)
    got = store.get_evaluation(eid)
    assert got["status"] == "completed" and got["worker_id"] == b.worker_id
    keys = [r["task_key"] for r in store.list_responses(eid)]
    assert len(keys) == 6 == len(set(keys))
    messages = [e["message"] for e in store.list_events(eid)]
    assert sum("completed:" in m for m in messages) == 1  # only B reported an outcome


def test_reset_of_a_run_whose_local_worker_process_died_is_allowed_at_once(store):
    import socket
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    eid = jobs.enqueue(store, config(), LOCAL_ADMIN)
    store.claim_next_evaluation(f"{socket.gethostname()}:{proc.pid}:abc")
    jobs.reset(store, eid, LOCAL_ADMIN)
    doc = store.get_evaluation(eid)
    assert doc["status"] == "stopped" and doc["worker_id"] is None
    assert any("is gone from this host" in e["message"] for e in store.list_events(eid))
