"""Store fixtures: a real SQLite file, an nx-27017 server on loopback, and a real MongoDB if given.

nx-27017 runs with --data-dir (one SQLite file per database): with a single
--db file it shares collections across database names, so a fresh database
per test would not isolate anything.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storybench_core.store.base import Store
from storybench_core.store.sqlite import SQLiteStore

REAL_MONGO_ENV = "STORYBENCH_TEST_MONGODB_URI"
NX_START_TIMEOUT_S = 30.0

StoreOpener = Callable[[], Store]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def nx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start nx-27017 on a free loopback port for the session; yields its mongodb:// URI."""
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    exe = Path(sys.executable).parent / "nx-27017"
    if not exe.exists():
        pytest.fail(f"{exe} not found: install requirements-dev.txt (nx-27017) into the venv")
    work = tmp_path_factory.mktemp("nx-27017")
    (work / "data").mkdir()
    port = _free_port()
    uri = f"mongodb://127.0.0.1:{port}"
    cmd = [
        str(exe),
        "--data-dir", str(work / "data"),
        "--host", "127.0.0.1",
        "-p", str(port),
        "--log-file", str(work / "server.log"),
        "--pid-file", str(work / "server.pid"),
    ]  # fmt: skip
    with open(work / "console.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + NX_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"nx-27017 exited with {proc.returncode}; see {work / 'console.log'}")
            client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=500)
            try:
                client.admin.command("ping")
                break
            except PyMongoError:
                if time.monotonic() > deadline:
                    pytest.fail(f"nx-27017 did not answer on {uri} within {NX_START_TIMEOUT_S}s")
                time.sleep(0.2)
            finally:
                client.close()
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _drop_database(uri: str, name: str) -> None:
    from pymongo import MongoClient

    client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=2000)
    try:
        client.drop_database(name)
    except Exception:
        pass  # best effort: the server may already be gone
    finally:
        client.close()


@pytest.fixture(params=["sqlite", "mongo-nx", "mongo-real"])
def store_opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreOpener]:
    """A callable opening another handle on the same backing store (a second worker's view)."""
    opened: list[Store] = []
    uri: str | None = None
    db_name = f"sbtest_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        path = tmp_path / "storybench.db"

        def open_one() -> Store:
            return SQLiteStore(path)

    else:
        if request.param == "mongo-nx":
            uri = request.getfixturevalue("nx_server")
        else:
            uri = os.environ.get(REAL_MONGO_ENV)
            if not uri:
                pytest.skip(f"set {REAL_MONGO_ENV} to run the contract suite against a real MongoDB")
        from storybench_core.store.mongo import MongoStore

        def open_one() -> Store:
            assert uri is not None
            return MongoStore(uri, db_name)

    def opener() -> Store:
        store = open_one()
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()
    if uri is not None:
        _drop_database(uri, db_name)


@pytest.fixture
def store(store_opener: StoreOpener) -> Store:
    return store_opener()
