"""The audit trail module: record, read back with filters, export; and the Activity page's view."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta

import pytest

from storybench_core import audit
from storybench_core.access import LOCAL_ADMIN, AccessPolicy, Principal, cli_principal
from storybench_core.errors import ConfigError, PermissionDenied
from storybench_core.store.sqlite import SQLiteStore
from storybench_core.views import activity

ANN = Principal(id="ann@example.com", name="Ann", role="operator", source="oidc")


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "audit.db")
    yield s
    s.close()


def test_record_and_read_back_newest_first(store) -> None:
    audit.record(store, ANN, "queue", "e1", {"tasks": 3})
    audit.record(store, cli_principal(), "delete", "e1", {"export": "/tmp/e1.json"})
    audit.record(store, ANN, "stop", "e2")
    found = audit.entries(store)
    assert [e.action for e in found] == ["stop", "delete", "queue"]
    queued = found[-1]
    assert (queued.actor, queued.actor_name, queued.role, queued.source) == (
        "ann@example.com", "Ann", "operator", "oidc",
    )  # fmt: skip
    assert queued.details == {"tasks": 3} and found[0].details == {}
    assert abs(queued.ts - datetime.now(UTC)) < timedelta(minutes=1)
    assert [e.action for e in audit.entries(store, actor=ANN.id)] == ["stop", "queue"]
    assert [e.actor for e in audit.entries(store, target="e1", action="delete")] == [cli_principal().id]
    assert audit.entries(store, since=datetime.now(UTC) + timedelta(hours=1)) == []
    with pytest.raises(ConfigError, match="unknown audit action 'launch'"):
        audit.entries(store, action="launch")


def test_parse_since() -> None:
    assert audit.parse_since("2026-03-01") == datetime(2026, 3, 1, tzinfo=UTC)
    assert audit.parse_since("2026-03-01T10:30+02:00") == datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        audit.parse_since("last tuesday")


def test_exports_are_complete_and_formula_safe(store) -> None:
    audit.record(store, ANN, "save_config", "=HYPERLINK(x)", {"replaced": True})
    audit.record(store, LOCAL_ADMIN, "archive", "e9", {"archived": True})
    found = audit.entries(store)
    rows = list(csv.DictReader(io.StringIO(audit.export_csv(found))))
    assert [r["action"] for r in rows] == ["archive", "save_config"]
    assert rows[1]["target"] == "'=HYPERLINK(x)" and json.loads(rows[1]["details"]) == {"replaced": True}
    assert datetime.fromisoformat(rows[0]["ts"]).tzinfo is not None
    data = json.loads(audit.export_json(found))
    assert data[0]["actor"] == "local" and data[0]["details"] == {"archived": True}
    assert data[1]["target"] == "=HYPERLINK(x)"  # JSON keeps the value as it is


def test_activity_view_filters_and_frames(store) -> None:
    old = store.add_audit(
        {"ts": datetime(2026, 1, 1, tzinfo=UTC), "actor": "bo@example.com", "action": "vote", "target": "e0"}
    )
    audit.record(store, ANN, "queue", "e1", {"tasks": 3})
    audit.record(store, ANN, "stop", "e1")
    assert activity.actors(store) == ["ann@example.com", "bo@example.com"]
    found = activity.entries(store, activity.ActivityFilters(actor=ANN.id))
    assert [e.action for e in found] == ["stop", "queue"]
    assert [e.id for e in activity.entries(store, activity.ActivityFilters(action="vote"))] == [old]
    recent = activity.entries(store, activity.ActivityFilters(since=date(2026, 1, 2)))
    assert {e.actor for e in recent} == {ANN.id}
    assert len(activity.entries(store, activity.ActivityFilters(limit=1))) == 1
    frame = activity.entries_frame(activity.entries(store, activity.ActivityFilters()))
    assert list(frame.columns) == activity.ENTRY_COLUMNS and len(frame) == 3
    assert frame.iloc[-1]["target"] == "e0" and frame.iloc[-1]["details"] == ""
    assert json.loads(frame.iloc[1]["details"]) == {"tasks": 3}
    assert activity.csv_bytes(found).startswith(b"id,ts,actor")
    assert json.loads(activity.json_bytes(found))[0]["action"] == "stop"


def test_the_access_list_is_for_admins() -> None:
    policy = AccessPolicy(admins=["ana@example.com"], operators=["@example.com"], max_queued_tasks=0)
    frame = activity.access_frame(LOCAL_ADMIN, policy)
    assert frame.to_dict(orient="records") == [
        {"entry": "ana@example.com", "matches": "this e-mail", "role": "admin"},
        {"entry": "@example.com", "matches": "everyone at the domain", "role": "operator"},
        {"entry": "everyone else signed in", "matches": "", "role": "viewer"},
    ]
    with pytest.raises(PermissionDenied, match="see the access list"):
        activity.access_frame(ANN, policy)
    assert activity.limits_caption(policy).startswith(
        "Per operator: 5 queued or running evaluation(s), no limit"
    )
