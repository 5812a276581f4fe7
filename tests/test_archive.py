"""Archive (hidden, data kept) and export-then-delete, in the core and through the CLI."""

from __future__ import annotations

import json

import pytest
from test_pairwise import make_evaluation

from storybench_core import archive, audit, cli, jobs, paths, votes
from storybench_core.access import LOCAL_ADMIN, Principal
from storybench_core.errors import JobError, PermissionDenied, StorybenchError
from storybench_core.store.sqlite import SQLiteStore
from storybench_core.views import results as results_view

OPERATOR = Principal(id="op@example.com", name="Op", role="operator", source="oidc")


@pytest.fixture
def store(storybench_home):
    s = SQLiteStore(paths.sqlite_path())
    yield s
    s.close()


def test_archive_hides_an_evaluation_and_keeps_its_data(store) -> None:
    eid = make_evaluation(store, {"m1": 1, "m2": 2}, runs=1)
    responses = len(store.list_responses(eid))
    assert [e["id"] for e in votes.votable_evaluations(store)] == [eid]
    doc = archive.archive_evaluation(store, eid, LOCAL_ADMIN)
    assert archive.is_archived(doc) and archive.is_archived(store.get_evaluation(eid))
    assert store.get_evaluation(eid)["archived_by"] == "local"
    assert archive.visible(store.list_evaluations()) == [] and votes.votable_evaluations(store) == []
    assert len(store.list_responses(eid)) == responses  # data kept
    frame = results_view.responses_frame(store.list_responses())
    assert results_view.without_evaluations(frame, [eid]).empty and len(frame) == responses
    archive.archive_evaluation(store, eid, LOCAL_ADMIN)  # archiving twice changes nothing
    archive.restore_evaluation(store, eid, LOCAL_ADMIN)
    assert not archive.is_archived(store.get_evaluation(eid))
    assert [e.details["archived"] for e in audit.entries(store, action="archive")] == [False, True]
    with pytest.raises(PermissionDenied, match="op@example.com \\(operator\\) may not archive"):
        archive.archive_evaluation(store, eid, OPERATOR)


def test_a_queued_or_running_evaluation_is_neither_archived_nor_deleted(store, tmp_path) -> None:
    from test_guards import config

    eid = jobs.enqueue(store, config(), LOCAL_ADMIN)
    with pytest.raises(JobError, match="is queued; stop it"):
        archive.archive_evaluation(store, eid, LOCAL_ADMIN)
    with pytest.raises(JobError, match="is queued; stop it"):
        archive.export_then_delete(store, eid, LOCAL_ADMIN, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists() and store.get_evaluation(eid) is not None


def test_export_then_delete_writes_everything_first(store, tmp_path) -> None:
    eid = make_evaluation(store, {"m1": 1, "m2": 2}, runs=1)
    keep = make_evaluation(store, {"m1": 1, "m2": 2}, runs=1)
    pair = votes.next_pair_for(store, eid, "kim")
    votes.record_vote(store, LOCAL_ADMIN, pair, "A", typed_name="kim")
    counts = (len(store.list_responses(eid)), len(store.list_judgements(eid)), len(store.list_events(eid)))
    out = archive.export_then_delete(store, eid, LOCAL_ADMIN, tmp_path / "exports" / "old.json")
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["evaluation"]["id"] == eid
    assert (len(data["responses"]), sum(len(r["judgements"]) for r in data["responses"])) == counts[:2]
    assert len(data["events"]) == counts[2] and len(data["votes"]) == 1
    assert data["responses"][0]["messages"]  # the conversation each response saw
    assert store.get_evaluation(eid) is None and store.list_responses(eid) == []
    assert store.list_judgements(eid) == [] and store.list_votes(eid) == []
    assert store.get_evaluation(keep) is not None
    [entry] = audit.entries(store, action="delete")
    assert entry.target == eid and entry.details["export"] == str(out.resolve())
    assert audit.entries(store, target=eid, action="vote")  # the trail outlives the evaluation
    assert not list((tmp_path / "exports").glob("*.partial"))


def test_delete_never_overwrites_and_needs_an_admin(store, tmp_path) -> None:
    eid = make_evaluation(store, {"m1": 1}, runs=1)
    taken = tmp_path / "taken.json"
    taken.write_text("{}", encoding="utf-8")
    with pytest.raises(StorybenchError, match="already exists"):
        archive.export_then_delete(store, eid, LOCAL_ADMIN, taken)
    with pytest.raises(PermissionDenied, match="delete an evaluation"):
        archive.export_then_delete(store, eid, OPERATOR, tmp_path / "new.json")
    assert store.get_evaluation(eid) is not None and taken.read_text(encoding="utf-8") == "{}"
    assert archive.default_export_path(eid).parent == paths.storybench_home() / "exports"


def test_cli_archive_delete_and_audit(store, tmp_path, capsys) -> None:
    eid = make_evaluation(store, {"m1": 1, "m2": 2}, runs=1)
    assert cli.main(["archive", eid]) == 0
    assert "archived" in capsys.readouterr().err
    assert cli.main(["leaderboard"]) == 2  # the only evaluation is archived
    assert "archived ones aside" in capsys.readouterr().err
    assert cli.main(["archive", eid, "--restore"]) == 0
    out = tmp_path / "gone.json"
    assert cli.main(["delete", eid, "--export", str(out)]) == 0
    assert out.is_file() and store.get_evaluation(eid) is None
    assert cli.main(["delete", eid, "--export", str(tmp_path / "again.json")]) == 2
    capsys.readouterr()
    assert cli.main(["audit", "--format", "json", "--action", "archive"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["details"]["archived"] for e in entries] == [False, True]
    assert all(e["actor"].startswith("cli:") and e["role"] == "admin" for e in entries)
    assert (
        cli.main(["audit", "--since", "2000-01-01", "--out", str(tmp_path / "a.csv"), "--format", "csv"]) == 0
    )
    assert (tmp_path / "a.csv").read_text(encoding="utf-8").count("\n") == 1 + 4  # header + 4 entries
    assert cli.main(["audit"]) == 0
    table = capsys.readouterr().out
    assert "delete" in table and eid in table
    assert cli.main(["audit", "--since", "yesterday"]) == 2
