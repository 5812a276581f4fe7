"""Every guarded core action: refused below its role (PermissionDenied, nothing changed), allowed at it,
and recorded in the audit trail with the acting principal."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from storybench_core import archive, audit, hub, jobs, paths
from storybench_core.access import ACTION_ROLES, AccessPolicy, Principal, Role
from storybench_core.config import parse_config
from storybench_core.errors import PermissionDenied
from storybench_core.hub import ModelRef
from storybench_core.store.sqlite import SQLiteStore
from storybench_core.views import configure, judging, models

VIEWER = Principal(id="vi@example.com", name="Vi", role="viewer", source="oidc")
OPERATOR = Principal(id="op@example.com", name="Op", role="operator", source="oidc")
ADMIN = Principal(id="ad@example.com", name="Ad", role="admin", source="header")
BY_ROLE: dict[Role, Principal] = {"viewer": VIEWER, "operator": OPERATOR, "admin": ADMIN}
BELOW: dict[Role, list[Principal]] = {"operator": [VIEWER], "admin": [VIEWER, OPERATOR]}
OPEN = AccessPolicy(max_queued_evaluations=0, max_queued_tasks=0)


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "guards.db")
    yield s
    s.close()


def config(runs: int = 1, name: str = "guarded"):
    return parse_config(
        {
            "name": name,
            "models": [{"kind": "fake", "options": {"words": 8}}],
            "sequences": ["film"],
            "generation": {"runs": runs, "max_tokens": 32},
        }
    )


def finished(store, status: str = "stopped") -> str:
    """An evaluation queued by the admin and put straight into a final status."""
    eid = jobs.enqueue(store, config(), ADMIN, policy=OPEN)
    store.update_evaluation(eid, {"status": status})
    return eid


# Each case: the action, what it needs, a setup returning its target, the call, a check it did nothing.
Setup = Callable[[SQLiteStore], Any]
Call = Callable[[SQLiteStore, Principal, Any], Any]


def _queue(store, who, _):
    return jobs.enqueue(store, config(), who, policy=OPEN)


def _stop(store, who, eid):
    return jobs.request_stop(store, eid, who)


def _resume(store, who, eid):
    return jobs.requeue(store, eid, who, policy=OPEN)


def _reset(store, who, eid):
    return jobs.reset(store, eid, who)


def _running(store):
    eid = finished(store, "running")
    return eid


def _judge(store, who, eid):
    return judging.JudgeJobs(store).start(store, eid, who)  # queues a judge job


def _download(store, who, _):
    tracker = models.DownloadTracker(lambda ref, progress: Path(paths.models_dir() / ref.filename))
    state = tracker.start(ModelRef("owner/repo", "m.gguf"), who, store)
    tracker.wait()
    return state


def _model_file(store):
    target = paths.models_dir() / "hub" / "owner--repo" / "m.gguf"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"GGUF" + b"\0" * 60)
    return target


def _delete_model(store, who, target):
    return hub.delete_cached_model(target, who, store)


def _save_config(store, who, _):
    return configure.save_named_config(config(name="team config"), who, store)


def _archive(store, who, eid):
    return archive.archive_evaluation(store, eid, who)


def _delete(store, who, eid):
    return archive.export_then_delete(store, eid, who, paths.storybench_home() / f"export-{who.role}.json")


CASES: dict[str, tuple[str, Setup, Call]] = {
    "queue": ("queue", lambda s: None, _queue),
    "stop": ("stop", _running, _stop),
    "resume": ("resume", finished, _resume),
    "reset": ("reset", _running, _reset),
    "judge": ("judge", finished, _judge),
    "download_model": ("download_model", lambda s: None, _download),
    "save_config": ("save_config", lambda s: None, _save_config),
    "delete_model": ("delete_model", _model_file, _delete_model),
    "archive": ("archive", finished, _archive),
    "delete": ("delete", finished, _delete),
}


def _refusals() -> list[tuple[str, Principal]]:
    return [(name, who) for name, (action, _, _) in CASES.items() for who in BELOW[ACTION_ROLES[action]]]


@pytest.mark.parametrize(("case", "who"), _refusals(), ids=lambda v: v if isinstance(v, str) else v.role)
def test_refused_below_the_role_and_nothing_changes(store, case: str, who: Principal) -> None:
    action, setup, call = CASES[case]
    target = setup(store)
    before = (
        store.list_evaluations(),
        store.list_jobs(),
        len(store.list_audit()),
        sorted(paths.storybench_home().rglob("*")),
    )
    with pytest.raises(PermissionDenied) as info:
        call(store, who, target)
    message = str(info.value)
    assert who.id in message and f"({who.role})" in message and ACTION_ROLES[action] in message
    after = (
        store.list_evaluations(),
        store.list_jobs(),
        len(store.list_audit()),
        sorted(paths.storybench_home().rglob("*")),
    )
    assert after == before


@pytest.mark.parametrize("case", list(CASES))
def test_allowed_at_the_role_and_audited(store, case: str) -> None:
    action, setup, call = CASES[case]
    who = BY_ROLE[ACTION_ROLES[action]]
    target = setup(store)
    call(store, who, target)
    [entry] = [e for e in audit.entries(store, action=action) if e.actor == who.id]
    assert (entry.role, entry.source, entry.actor_name) == (who.role, who.source, who.name)
    if target is not None:
        assert entry.target == str(target)


def test_every_state_changing_action_has_a_case() -> None:
    reads = {"vote", "view_access"}  # vote: tests/test_votes.py; view_access: a read (test_activity.py)
    assert set(ACTION_ROLES) - reads == {action for action, _, _ in CASES.values()}


# --- what the guarded actions record and refuse beyond the role ---------------------------------


def test_the_queue_records_who_and_the_console_says_so(store) -> None:
    eid = jobs.enqueue(store, config(runs=2), OPERATOR, policy=OPEN)
    doc = store.get_evaluation(eid)
    assert doc["queued_by"] == OPERATOR.id
    assert "by op@example.com" in store.list_events(eid)[0]["message"]
    [entry] = audit.entries(store, action="queue")
    assert entry.details == {"name": "guarded", "tasks": 6, "config_hash": doc["config_hash"]}


def test_an_operator_is_held_to_the_queue_limits_and_an_admin_is_not(store) -> None:
    policy = AccessPolicy(max_queued_evaluations=2, max_queued_tasks=8)
    jobs.enqueue(store, config(), OPERATOR, policy=policy)  # 3 tasks
    with pytest.raises(PermissionDenied, match=r"max_queued_tasks"):
        jobs.enqueue(store, config(runs=2), OPERATOR, policy=policy)  # 3 + 6 > 8
    second = jobs.enqueue(store, config(), OPERATOR, policy=policy)
    with pytest.raises(PermissionDenied, match=r"op@example.com already has 2 .*max_queued_evaluations"):
        jobs.enqueue(store, config(), OPERATOR, policy=policy)
    assert jobs.queued_work(store, OPERATOR) == (2, 6)
    other = Principal(id="other@example.com", name="O", role="operator", source="oidc")
    jobs.enqueue(store, config(), other, policy=policy)  # limits are per operator
    jobs.enqueue(store, config(runs=5), ADMIN, policy=policy)
    # Work that finished no longer counts; a resume counts what it would requeue.
    jobs.request_stop(store, second, OPERATOR)
    assert jobs.queued_work(store, OPERATOR) == (1, 3)
    jobs.enqueue(store, config(), OPERATOR, policy=policy)
    with pytest.raises(PermissionDenied, match=r"max_queued_evaluations"):
        jobs.requeue(store, second, OPERATOR, policy=policy)
    assert len(audit.entries(store, action="queue")) == 5


def test_the_limits_come_from_the_secrets_file(store, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text(
        "[storybench.access]\nmax_queued_evaluations = 1\n", encoding="utf-8"
    )
    jobs.enqueue(store, config(), OPERATOR)
    with pytest.raises(PermissionDenied, match=r"limit is 1"):
        jobs.enqueue(store, config(), OPERATOR)


def test_stopping_a_judge_job_needs_an_operator_and_is_audited(store) -> None:
    eid = finished(store)
    tracker = judging.JudgeJobs(store)
    job = tracker.start(store, eid, OPERATOR, label="fake judge")
    with pytest.raises(PermissionDenied):
        tracker.stop(eid, VIEWER)
    tracker.stop(eid, OPERATOR)
    assert tracker.state(eid).status == "stopped"  # still queued: stopped at once
    stops = audit.entries(store, action="stop")
    assert [(e.actor, e.target, e.details) for e in stops] == [
        (OPERATOR.id, eid, {"job": job.job_id, "status": "stopped"})
    ]


def test_saving_over_a_config_is_recorded_as_a_replacement(store) -> None:
    configure.save_named_config(config(name="team"), OPERATOR, store)
    configure.save_named_config(config(runs=2, name="team"), ADMIN, store)
    entries = audit.entries(store, action="save_config")
    assert [(e.actor, e.target, e.details["replaced"]) for e in entries] == [
        (ADMIN.id, "team", True),
        (OPERATOR.id, "team", False),
    ]


def test_a_direct_download_call_is_guarded(store) -> None:
    with pytest.raises(PermissionDenied, match=r"download a model"):
        hub.download_model(store, VIEWER, ModelRef("owner/repo", "m.gguf"))
    assert audit.entries(store) == []


def test_preparing_the_built_in_models_needs_an_operator(store) -> None:
    with pytest.raises(PermissionDenied, match=r"download a model"):
        hub.prepare_builtin_models(store, VIEWER)
    assert audit.entries(store) == []
