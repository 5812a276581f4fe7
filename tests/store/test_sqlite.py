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
from storybench_core.store import sqlite as sqlite_module
from storybench_core.store.factory import open_store
from storybench_core.store.sqlite import MIGRATIONS, SQLiteStore

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
