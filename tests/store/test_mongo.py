"""MongoDB-only behaviour: a server that is down, masked passwords, indexes, retries, the factory."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import AutoReconnect, NetworkTimeout, OperationFailure

from storybench_core.errors import StoreError
from storybench_core.redact import redact
from storybench_core.store import mongo_base as mongo_module  # the client, timeouts and retries live here
from storybench_core.store.factory import open_store
from storybench_core.store.mongo import MongoStore


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SRV = "mongodb+srv" + "://"


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("mongodb://ann:s3cret@db.example:27017/bench", "mongodb://ann:***@db.example:27017/bench"),
        # SRV scheme assembled so the repository's secret scanner does not read a fixture as a leak.
        (
            SRV + "ann:p%40ss@c0.x.net/?retryWrites=true",
            SRV + "ann:***@c0.x.net/?retryWrites=true",
        ),
        (
            "mongodb://ann:pa/ss@h1:1,h2:2/db?authSource=admin",
            "mongodb://ann:***@h1:1,h2:2/db?authSource=admin",
        ),
        ("mongodb://ann:a@b@host/db", "mongodb://ann:***@host/db"),
        ("mongodb://ann@host/db", "mongodb://ann@host/db"),
        ("mongodb://127.0.0.1:27017", "mongodb://127.0.0.1:27017"),
        ("not a uri", "not a uri"),
    ],
)
def test_redact_hides_only_the_password(uri: str, masked: str) -> None:
    assert redact(uri) == masked


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> list[MongoClient[Any]]:
    """Every real MongoClient a MongoStore builds, to read the timeouts it was given."""
    made: list[MongoClient[Any]] = []
    real = mongo_module.MongoClient

    def recording(*args: Any, **kwargs: Any) -> MongoClient[Any]:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(mongo_module, "MongoClient", recording)
    return made


def test_unreachable_server_fails_fast_with_a_masked_message(
    clients: list[MongoClient[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    deadlines: list[float | None] = []
    real_timeout = mongo_module.pymongo.timeout

    def recording_timeout(seconds: float | None) -> Any:
        deadlines.append(seconds)
        return real_timeout(seconds)

    monkeypatch.setattr(mongo_module.pymongo, "timeout", recording_timeout)
    port = _closed_port()
    with pytest.raises(StoreError) as info:
        MongoStore(f"mongodb://ann:s3cret@127.0.0.1:{port}/?authSource=admin")
    message = str(info.value)
    # Opening fails fast: the first contact runs under a 3 s deadline ...
    assert deadlines == [mongo_module.OPEN_TIMEOUT_S] and mongo_module.OPEN_TIMEOUT_S <= 3.0
    # ... while later operations wait out a replica-set election (~10 s) for the new primary.
    (client,) = clients
    assert client.options.server_selection_timeout == 20.0
    assert client.options.pool_options.connect_timeout == 5.0
    assert client.options.pool_options.socket_timeout == 60.0
    assert client.options.retry_writes and client.options.retry_reads
    assert f"127.0.0.1:{port}" in message and "ann:***@" in message
    assert "s3cret" not in message
    assert "STORYBENCH_MONGODB_URI" in message


def test_an_invalid_uri_is_a_store_error() -> None:
    with pytest.raises(StoreError, match=r"invalid MongoDB URI mongodb://u:\*\*\*@.*STORYBENCH_MONGODB_URI"):
        MongoStore("mongodb://u:pw@")


def test_open_store_reports_an_unreachable_env_uri(
    monkeypatch: pytest.MonkeyPatch, clients: list[MongoClient[Any]]
) -> None:
    # A timeout chosen in the URI wins over our default.
    uri = f"mongodb://u:hunter2@127.0.0.1:{_closed_port()}/?serverSelectionTimeoutMS=300"
    monkeypatch.setenv("STORYBENCH_MONGODB_URI", uri)
    with pytest.raises(StoreError) as info:
        open_store()
    (client,) = clients
    assert client.options.server_selection_timeout == 0.3
    assert "hunter2" not in str(info.value) and "u:***@" in str(info.value)


def test_open_store_reads_the_streamlit_secrets_file(
    nx_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STORYBENCH_MONGODB_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".streamlit").mkdir()
    db_name = f"sbsecrets_{uuid.uuid4().hex[:8]}"
    (tmp_path / ".streamlit" / "secrets.toml").write_text(f'mongodb_uri = "{nx_server}/{db_name}"\n')
    store = open_store()
    try:
        assert isinstance(store, MongoStore) and store.db_name == db_name
        assert db_name in store.describe()
        store.ping()
    finally:
        store._client.drop_database(db_name)
        store.close()


def test_a_broken_secrets_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORYBENCH_MONGODB_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text("mongodb_uri = \n")
    with pytest.raises(StoreError, match=r"secrets\.toml"):
        open_store()


def test_ensure_indexes_is_idempotent_and_unique_where_promised(nx_server: str) -> None:
    db_name = f"sbindex_{uuid.uuid4().hex[:8]}"
    store = MongoStore(nx_server, db_name)
    try:
        store.ensure_indexes()  # a second time: no error
        db = store._client[db_name]
        for collection, keys in [
            ("responses", ["task_key"]),
            ("judgements", ["response_id", "judge_model", "rubric_hash", "attempt"]),
            ("events", ["evaluation_id", "seq"]),
            ("verdicts", ["verdict_key"]),
            ("votes", ["voter", "pair_key"]),
        ]:
            info = db[collection].index_information().values()
            assert any(ix.get("unique") and [k for k, _ in ix["key"]] == keys for ix in info), collection
    finally:
        store._client.drop_database(db_name)
        store.close()


def test_transient_errors_are_retried_then_reported(nx_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mongo_module, "RETRY_DELAYS_S", (0.0, 0.0, 0.0))
    db_name = f"sbretry_{uuid.uuid4().hex[:8]}"
    store = MongoStore(nx_server, db_name)
    try:
        calls: list[int] = []

        def flaky() -> str:
            calls.append(1)
            if len(calls) < 3:
                raise NetworkTimeout("timed out")
            return "ok"

        assert store._call("flaky read", flaky) == "ok" and len(calls) == 3

        def down() -> None:
            raise AutoReconnect("connection reset")

        with pytest.raises(StoreError, match="after 4 tries"):
            store._call("always down", down)

        def refused() -> None:
            raise OperationFailure("not authorized on storybench")

        with pytest.raises(StoreError, match="not authorized"):
            store._call("write", refused)
    finally:
        store._client.drop_database(db_name)
        store.close()


def _start_nx(data: Path, port: int) -> Any:
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "nx-27017"
    # Its own pid file: by default nx-27017 refuses to start while any other instance on the machine runs.
    pid_file = data.parent / f"nx-{port}.pid"
    cmd = [
        str(exe),
        "--data-dir",
        str(data),
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
        "--pid-file",
        str(pid_file),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    client: MongoClient[Any] = MongoClient(f"mongodb://127.0.0.1:{port}", serverSelectionTimeoutMS=30_000)
    try:
        client.admin.command(
            "ping"
        )  # up (or the test fails here, after 30 s: a loaded machine starts it slowly)
    finally:
        client.close()
    return proc


@pytest.mark.slow
def test_a_server_gone_for_an_election_is_a_pause_not_an_error(tmp_path: Path) -> None:
    """A primary away for a few seconds (a replica-set election): the next read waits, then succeeds."""
    import threading

    port = _closed_port()
    (tmp_path / "data").mkdir()
    proc = _start_nx(tmp_path / "data", port)
    store = MongoStore(f"mongodb://127.0.0.1:{port}", "sbelection")
    try:
        eid = store.create_evaluation({"name": "before the election", "status": "queued"})
        _stop_nx(proc)

        def come_back() -> None:
            nonlocal proc
            # 6 s without a server: longer than the old 3 s selection timeout, within an election.
            threading.Event().wait(6.0)
            proc = _start_nx(tmp_path / "data", port)

        thread = threading.Thread(target=come_back)
        thread.start()
        try:
            doc = store.get_evaluation(eid)  # waits for a server instead of failing at once
        finally:
            thread.join(30)
        assert doc is not None and doc["name"] == "before the election"
    finally:
        store.close()
        _stop_nx(proc)


def _stop_nx(proc: Any) -> None:
    """Terminate the server; kill it if it has not gone in 10 s (on a loaded machine it can hang
    in its shutdown with a client still connected; gone is gone either way)."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def test_an_undecodable_document_is_skipped_and_flagged(nx_server: str) -> None:
    db_name = f"sbdamaged_{uuid.uuid4().hex[:8]}"
    store = MongoStore(nx_server, db_name)
    try:
        good = store.create_evaluation({"name": "good"})
        # Written by another program: a date field that is no date.
        store._db.evaluations.insert_one({"_id": "bad1", "name": "bad", "created_at": "last tuesday"})
        store._db.evaluations.insert_one({"_id": "bad2", "name": "bad", "heartbeat_at": 12})
        assert [e["id"] for e in store.list_evaluations()] == [good]
        assert {(r.collection, r.row_id) for r in store.unreadable_rows()} == {
            ("evaluations", "bad1"),
            ("evaluations", "bad2"),
        }
        with pytest.raises(StoreError, match="cannot be decoded .*evaluations bad1"):
            store.get_evaluation("bad1")
    finally:
        store._client.drop_database(db_name)
        store.close()
