"""Judge and pairwise jobs in the store's queue, done by the same Worker as runs.

The scripted fake backend stands in for candidate and judge (fast tests); tests/test_judge_slow.py
and tests/test_pairwise_slow.py cover the judging paths with the real bundled models. A real
SQLite file throughout; "a second session" and "a restarted server" are second store handles and
new Worker objects on the same file, as they are in the dashboard.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from storybench_core import job_kinds, jobs
from storybench_core.access import LOCAL_ADMIN, Principal
from storybench_core.backends.registry import create_backend
from storybench_core.config import ModelSpec, parse_config
from storybench_core.errors import JobError, PermissionDenied
from storybench_core.runner import ModelPool
from storybench_core.store.sqlite import SQLiteStore
from storybench_core.views import judging

VIEWER = Principal(id="vera", name="Vera", role="viewer", source="test")


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "jobs.db")
    yield s
    s.close()


def judged_config(judge_delay_s: float = 0.0, runs: int = 2):
    return parse_config(
        {
            "name": "to judge",
            "models": [{"kind": "fake", "name": "cand", "options": {"words": 20}}],
            "sequences": ["film"],
            "generation": {"runs": runs, "max_tokens": 64},
            "judge": {"model": {"kind": "fake", "name": "fj", "options": {"delay_s": judge_delay_s}}},
        }
    )


def wait_for(predicate, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


class CountingFactory:
    """create_backend, counting models loaded at the same time (the pool must hold at most one)."""

    def __init__(self) -> None:
        self.live = 0
        self.most = 0
        self.loaded: list[str] = []

    def __call__(self, spec, gen):
        backend = create_backend(spec, gen)
        self.live += 1
        self.most = max(self.most, self.live)
        self.loaded.append(spec.display_name)
        close = backend.close

        def counted_close() -> None:
            self.live -= 1
            close()

        backend.close = counted_close
        return backend


def run_evaluation(store, config) -> str:
    eid = jobs.enqueue(store, config, LOCAL_ADMIN)
    assert jobs.Worker(store).run_once()
    assert store.get_evaluation(eid)["status"] == "completed"
    return eid


def test_judge_now_is_a_queued_job_that_every_session_sees_and_the_worker_does(store, tmp_path):
    eid = run_evaluation(store, judged_config())
    page = judging.JudgeJobs(store)
    state = page.start(store, eid, LOCAL_ADMIN, None, "Configured judge: fj")
    assert (state.status, state.active, state.judge_label) == ("queued", True, "Configured judge: fj")
    assert "queued" in state.progress_label
    # A second session (another store handle on the same file) sees the same job, and a second
    # Judge now while it is active returns it instead of queueing another.
    other = SQLiteStore(tmp_path / "jobs.db")
    try:
        assert judging.JudgeJobs(other).state(eid).job_id == state.job_id
        assert page.start(other, eid, LOCAL_ADMIN).job_id == state.job_id
        assert len(store.list_jobs(evaluation_id=eid)) == 1
        factory = CountingFactory()
        worker = jobs.Worker(other, pool=ModelPool(factory))
        assert worker.run_once()
        assert not worker.run_once()  # nothing left
    finally:
        other.close()
    done = page.state(eid)
    assert (done.status, done.active, done.fraction) == ("completed", False, 1.0)
    assert (done.judged, done.failed, done.skipped) == (6, 0, 0)
    assert done.progress_label == "fj: 6 / 6 judgements"
    assert any("judging finished" in line for line in done.lines)
    assert len(store.list_judgements(eid)) == 6
    assert factory.loaded == ["fj"] and factory.most == 1 and factory.live == 0  # unloaded afterwards
    # Judging again queues a new job that finds nothing missing.
    again = page.start(store, eid, LOCAL_ADMIN, ModelSpec(kind="fake", name="fj"))
    assert again.job_id != state.job_id
    assert jobs.Worker(store).run_once()
    assert page.state(eid).skipped == 6 and len(store.list_judgements(eid)) == 6


def test_a_judge_job_stops_resumes_after_a_restart_and_never_judges_twice(store):
    eid = run_evaluation(store, judged_config(judge_delay_s=0.05, runs=3))
    job_id, created = job_kinds.enqueue_job(store, "judge", eid, LOCAL_ADMIN)
    assert created
    factory = CountingFactory()
    worker = jobs.Worker(store, pool=ModelPool(factory))
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    assert wait_for(lambda: len(store.list_judgements(eid)) >= 2)
    assert job_kinds.request_stop_job(store, job_id, LOCAL_ADMIN) == "stopping"
    thread.join(20)
    assert not thread.is_alive()
    stopped = job_kinds.get_job(store, job_id)
    judged_before = len(store.list_judgements(eid))
    assert stopped["status"] == "stopped" and 2 <= judged_before < 9
    # "Restart the server": a new Worker with a new pool resumes the job; only what is missing is judged.
    job_kinds.requeue_job(store, job_id, LOCAL_ADMIN)
    restarted = jobs.Worker(store, pool=ModelPool(factory))
    assert restarted.run_once()
    resumed = job_kinds.get_job(store, job_id)
    assert resumed["status"] == "completed" and resumed["result"]["skipped"] == judged_before
    judgements = store.list_judgements(eid)
    keys = [(j["response_id"], j["attempt"]) for j in judgements]
    assert len(keys) == 9 == len(set(keys))
    assert factory.most == 1
    with pytest.raises(JobError, match="only stopped or failed"):
        job_kinds.requeue_job(store, job_id, LOCAL_ADMIN)  # completed: nothing to resume
    events = [e for e in store.list_events(eid) if e.get("job") == job_id]
    assert any("stop requested" in e["message"] for e in events)
    assert any("resumed by" in e["message"] for e in events)


def test_a_job_whose_worker_died_is_requeued_and_done_by_the_next_worker(store):
    eid = run_evaluation(store, judged_config())
    job_id, _ = job_kinds.enqueue_job(store, "judge", eid, LOCAL_ADMIN)
    claimed = store.claim_next_job("otherhost:1:gone", job_id=job_id)
    assert claimed is not None and claimed["lease"] == 1
    assert job_kinds.recover_stale_jobs(store) == []  # it heartbeat a moment ago: alive
    store.update_job(job_id, {"heartbeat_at": store.clock() - timedelta(seconds=120)})
    assert jobs.Worker(store).run_once()  # recovers it, then claims it again with a new lease
    done = job_kinds.get_job(store, job_id)
    assert done["status"] == "completed" and done["lease"] == 2
    assert len(store.list_judgements(eid)) == 6
    # The dead worker's lease writes nothing now.
    assert not store.update_job(job_id, {"progress": {"done": 0}}, lease=jobs.Lease.of(claimed))


def test_runs_and_jobs_are_taken_oldest_first_one_model_at_a_time(store):
    eid = run_evaluation(store, judged_config())
    job_kinds.enqueue_job(store, "judge", eid, LOCAL_ADMIN)
    later_run = jobs.enqueue(store, judged_config(), LOCAL_ADMIN)
    factory = CountingFactory()
    worker = jobs.Worker(store, pool=ModelPool(factory))
    assert worker.run_once() and worker.run_once() and not worker.run_once()
    assert factory.loaded[0] == "fj"  # the job was queued first
    assert store.get_evaluation(later_run)["status"] == "completed"
    assert factory.most == 1


def test_pairwise_comparison_is_a_job_too(store):
    config = parse_config(
        judged_config().model_dump()
        | {
            "models": [
                {"kind": "fake", "name": "short", "options": {"words": 10}},
                {"kind": "fake", "name": "long", "options": {"words": 40}},
            ]
        }
    )
    eid = run_evaluation(store, config)
    job_id, _ = job_kinds.enqueue_job(store, "pairwise", eid, LOCAL_ADMIN, budget=4)
    assert jobs.Worker(store).run_once()
    done = job_kinds.get_job(store, job_id)
    assert done["status"] == "completed", done.get("error")
    assert done["result"]["calls"] <= 4
    assert len(store.list_verdicts(eid)) == done["result"]["verdicts"]


def test_job_roles_are_checked_in_the_core(store):
    eid = run_evaluation(store, judged_config())
    with pytest.raises(PermissionDenied):
        job_kinds.enqueue_job(store, "judge", eid, VIEWER)
    job_id, _ = job_kinds.enqueue_job(store, "judge", eid, LOCAL_ADMIN)
    with pytest.raises(PermissionDenied):
        job_kinds.request_stop_job(store, job_id, VIEWER)
    with pytest.raises(JobError, match="unknown job kind"):
        job_kinds.enqueue_job(store, "mine-bitcoin", eid, LOCAL_ADMIN)
    with pytest.raises(JobError, match="no evaluation with id"):
        job_kinds.enqueue_job(store, "judge", "nope", LOCAL_ADMIN)


def test_the_command_line_queues_watches_and_works_off_a_judge_job(tmp_path, capsys):
    """`storybench judge --queue`, `storybench jobs` and `storybench worker --once` over one store."""
    import json

    from storybench_core.cli import main

    path = tmp_path / "c.json"
    path.write_text(json.dumps(judged_config().model_dump(mode="json", exclude_none=True)), encoding="utf-8")
    assert main(["run", str(path)]) == 0
    eid = capsys.readouterr().out.strip().splitlines()[-1].split(": ")[1]
    assert main(["judge", eid, "--queue"]) == 0
    job_id = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["jobs", eid, "--format", "json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["id"], listed["kind"], listed["status"]) == (job_id, "judge", "queued")
    assert main(["worker", "--once"]) == 0
    assert main(["jobs", "--format", "json"]) == 0
    [done] = json.loads(capsys.readouterr().out)
    assert done["status"] == "completed" and done["progress"] == "6/6"
    assert main(["jobs", "--resume", job_id]) == 2  # completed: a clear error, exit 2
    assert "only stopped or failed" in capsys.readouterr().err
