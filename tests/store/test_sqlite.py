"""SQLite-only behaviour: migrations, WAL, many threads, surviving a killed writer, the factory."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storybench_core import paths
from storybench_core.errors import StoreError
from storybench_core.store import sqlite_base as sqlite_module  # migrations run here
from storybench_core.store.factory import open_store
from storybench_core.store.schema import MIGRATIONS
from storybench_core.store.sqlite import SQLiteStore

REPO_ROOT = Path(__file__).resolve().parents[2]


def _versions(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()


def test_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    eid = store.create_evaluation({"name": "kept"})
    store.close()
    expected = [(v, name) for v, name, _ in MIGRATIONS]
    assert _versions(path) == expected
    reopened = SQLiteStore(path)
    assert _versions(path) == expected  # nothing applied twice
    assert reopened.get_evaluation(eid)["name"] == "kept"  # type: ignore[index]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"responses_order", "evaluations_status_created"} <= indexes
    reopened.close()


def test_a_failing_migration_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.db"
    SQLiteStore(path).close()
    broken = (99, "broken", ["CREATE TABLE half_done (x INTEGER)", "CREATE TABLE nonsense syntax ("])
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(StoreError, match=r"s\.db"):
        SQLiteStore(path)
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "half_done" not in tables  # rolled back with the rest of migration 99
    assert max(v for v, _ in _versions(path)) == MIGRATIONS[-1][0]


def test_a_version_3_file_gains_the_audit_table_and_archived_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", [m for m in MIGRATIONS if m[0] <= 3])
    old = SQLiteStore(path)
    with old._tx() as conn:  # a row as Storybench before migration 4 wrote it
        conn.execute("INSERT INTO evaluations (id, name, status) VALUES ('e1', 'old', 'completed')")
    old.close()
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", MIGRATIONS)
    store = SQLiteStore(path)
    assert [v for v, _ in _versions(path)] == [v for v, _, _ in MIGRATIONS]
    assert store.get_evaluation("e1")["archived_at"] is None  # type: ignore[index]
    store.add_audit({"actor": "cli:root", "action": "archive", "target": "e1"})
    assert [e["target"] for e in store.list_audit(action="archive")] == ["e1"]
    store.close()


def test_a_file_from_a_newer_storybench_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', '2030-01-01')")
    with pytest.raises(StoreError, match="schema version 999"):
        SQLiteStore(path)


def test_unopenable_path_gives_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="STORYBENCH_HOME"):
        SQLiteStore(blocker / "sub" / "s.db")


def test_concurrent_writers_from_threads_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    shared = SQLiteStore(path)
    eid = shared.create_evaluation({"name": "busy", "status": "running"})
    failures: list[BaseException] = []

    def write(handle: SQLiteStore, worker: int) -> None:
        try:
            for i in range(40):
                handle.upsert_response({"evaluation_id": eid, "task_key": f"{worker}-{i}", "run": i})
                handle.append_event(eid, "info", f"{worker}-{i}")
                handle.update_evaluation(eid, {f"progress_{worker}": i})
                handle.list_responses(eid, include_messages=False)
        except BaseException as exc:
            failures.append(exc)

    # Three threads share one handle (the Streamlit case), three have their own (other processes).
    handles = [shared, shared, shared, SQLiteStore(path), SQLiteStore(path), SQLiteStore(path)]
    threads = [threading.Thread(target=write, args=(h, n)) for n, h in enumerate(handles)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures
    assert shared.count_responses(eid) == 6 * 40
    assert [e["seq"] for e in shared.list_events(eid)] == list(range(1, 241))
    doc = shared.get_evaluation(eid)
    assert doc is not None and all(doc[f"progress_{n}"] == 39 for n in range(6))
    for h in handles[3:]:
        h.close()


_CHILD = """
import sys
from storybench_core.store.sqlite import SQLiteStore
store = SQLiteStore(sys.argv[1])
eid = store.create_evaluation({"id": "e1", "name": "killed", "status": "running"})
i = 0
while True:
    store.upsert_response({"evaluation_id": eid, "task_key": f"t{i}", "response": "x" * 2000})
    store.append_event(eid, "info", f"wrote {i}")
    i += 1
    if i == 50:
        open(sys.argv[2], "w").write("50")
"""


def test_committed_rows_survive_a_killed_writer(tmp_path: Path) -> None:
    path, marker, log = tmp_path / "s.db", tmp_path / "marker", tmp_path / "child.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with open(log, "wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), str(marker)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "child never reached 50 writes"
            time.sleep(0.02)
        time.sleep(0.1)  # let it get into the middle of further writes
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    store = SQLiteStore(path)
    written = store.count_responses("e1")
    assert written >= 50
    assert store.completed_task_keys("e1") >= {f"t{i}" for i in range(50)}
    events = store.list_events("e1")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)) and len(events) >= 50
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.close()


def test_open_store_defaults_to_sqlite_in_storybench_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORYBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("STORYBENCH_MONGODB_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # no .streamlit/secrets.toml here
    store = open_store()
    assert isinstance(store, SQLiteStore)
    assert store.path == paths.sqlite_path().resolve()
    assert store.describe() == f"sqlite:{store.path}"
    store.close()


def test_open_store_accepts_sqlite_uris(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "x.db"
    for uri in (f"sqlite://{target}", f"sqlite:{target}"):  # sqlite:///abs/x.db and sqlite:/abs/x.db
        store = open_store(uri)
        assert isinstance(store, SQLiteStore) and store.path == target.resolve()
        store.close()
    assert target.exists()
    with pytest.raises(StoreError, match="unknown store URI"):
        open_store("postgres://u:secret@h/db")


# --- one damaged row: skipped and flagged, never a failed listing ---------------------------


def _damage(path: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(sql, params)


def test_an_undecodable_row_is_skipped_and_flagged_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    good = store.create_evaluation({"name": "good", "config": {"models": []}})
    bad = store.create_evaluation({"name": "bad", "config": {"models": []}})
    for i, eid in enumerate((good, bad)):
        store.upsert_response({"evaluation_id": eid, "task_key": f"k{i}", "response": "text", "messages": []})
    rid = store.list_responses(bad)[0]["id"]
    store.add_judgement({"response_id": rid, "evaluation_id": bad, "judge_model": "j", "rubric_hash": "r",
                         "attempt": 1, "scores": {"creativity": {"score": 4}}, "overall": 4.0})  # fmt: skip
    _damage(path, "UPDATE evaluations SET config = '{not json' WHERE id = ?", bad)
    _damage(path, "UPDATE responses SET messages = '[[[' WHERE evaluation_id = ?", bad)
    _damage(path, "UPDATE judgements SET scores = '{\"creativity\": ' WHERE evaluation_id = ?", bad)
    assert store.unreadable_rows() == []

    assert [e["id"] for e in store.list_evaluations()] == [good]
    assert [r["evaluation_id"] for r in store.list_responses()] == [good]
    assert store.list_judgement_scores(None, ["creativity"]) == []
    assert len(store.list_response_stats()) == 2  # the flat projection reads no JSON
    flagged = {(row.collection, row.row_id) for row in store.unreadable_rows()}
    assert flagged == {("evaluations", bad), ("responses", rid), ("judgements", store_judgement_id(path))}
    # Asked for by id, the damaged row is an error that names it, not a silent "not found".
    with pytest.raises(StoreError, match=f"cannot be decoded .*evaluations {bad}"):
        store.get_evaluation(bad)
    # A field update writes only its own columns, so it works on a damaged row (e.g. marking it failed)
    # without decoding, and leaves the damage for the reads to flag.
    assert store.update_evaluation(bad, {"status": "failed"})
    with pytest.raises(StoreError, match="cannot be decoded"):
        store.get_evaluation(bad)
    store.close()


def store_judgement_id(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("SELECT id FROM judgements").fetchone()[0])


def test_a_damaged_queued_evaluation_does_not_wedge_the_queue(tmp_path: Path) -> None:

    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    first = store.create_evaluation({"name": "first"})
    second = store.create_evaluation({"name": "second"})
    _damage(
        path,
        "UPDATE evaluations SET created_at = '2000-01-01T00:00:00+00:00', config = 'x' WHERE id = ?",
        first,
    )
    assert store.claim_next_evaluation("w") is None  # the damaged one: failed, not handed out
    claimed = store.claim_next_evaluation("w")
    assert claimed is not None and claimed["id"] == second
    with sqlite3.connect(path) as conn:
        status, error = conn.execute(
            "SELECT status, error FROM evaluations WHERE id = ?", (first,)
        ).fetchone()
    assert status == "failed" and "cannot be decoded" in error
    store.close()


def test_a_read_only_home_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from storybench_core.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("STORYBENCH_HOME", str(blocker / "home"))  # cannot be created, even by root
    assert main(["results"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot create the folder") and "STORYBENCH_HOME" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_chmod_read_only_home_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from storybench_core.cli import main

    home = tmp_path / "ro-home"
    home.mkdir()
    home.chmod(0o555)
    monkeypatch.setenv("STORYBENCH_HOME", str(home))
    try:
        assert main(["results"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(home) in err and "Traceback" not in err
        with pytest.raises(StoreError, match="writable"):
            SQLiteStore(home / "storybench.db")
    finally:
        home.chmod(0o755)
