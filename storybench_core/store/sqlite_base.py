"""The SQLite store's plumbing: one connection under a lock, transactions, migrations, row reads.

One connection guarded by a lock serves every thread of this process (Streamlit spawns many
short-lived threads, so a connection per thread would leak); WAL and busy_timeout let other
processes (a separate `storybench worker`) share the file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from storybench_core.errors import StoreError
from storybench_core.store.base import Doc
from storybench_core.store.schema import MIGRATIONS, count_words, dt_text, now, row_id, to_doc, to_row
from storybench_core.store.unreadable import UnreadableRow, UnreadableRows


class SQLiteBase:
    """Connection, transactions, migrations and row reads of a SQLite store file."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 15000) -> None:
        self.path = Path(path).expanduser().resolve()
        self._lock = threading.RLock()
        self._unreadable = UnreadableRows()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
            )
            self._conn.row_factory = sqlite3.Row
            self._conn.create_function("storybench_words", 1, count_words, deterministic=True)
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode survives a killed process; only power loss can drop
            # the last few commits.
            self._conn.execute("PRAGMA synchronous = NORMAL")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open the SQLite store at {self.path}: {exc}. Check that the folder is "
                "writable, or point STORYBENCH_HOME elsewhere."
            ) from exc
        self._migrate()

    # --- plumbing -----------------------------------------------------------

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction under the process lock; BEGIN IMMEDIATE takes the file's write lock up front."""
        with self._lock:
            conn = self._conn
            try:
                if write:
                    conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.rollback()
                    raise
                if conn.in_transaction:
                    conn.commit()
            except sqlite3.OperationalError as exc:
                hint = (
                    "another process held it too long; retry, or stop the other worker"
                    if "locked" in str(exc) or "busy" in str(exc)
                    else "check the disk and the file's permissions"
                )
                raise StoreError(f"SQLite store {self.path}: {exc} ({hint})") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path}: {exc}") from exc

    def _migrate(self) -> None:
        with self._tx() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            newest = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] or 0
        known = MIGRATIONS[-1][0]
        if newest > known:
            raise StoreError(
                f"the SQLite store {self.path} has schema version {newest}, but this Storybench "
                f"knows only up to {known}. Upgrade Storybench, or point STORYBENCH_HOME elsewhere."
            )
        for version, name, statements in MIGRATIONS:
            with self._tx() as conn:
                # Re-check inside the write lock: another process may have just applied it.
                done = conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,))
                if done.fetchone():
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, dt_text(now())),
                )

    def _insert(self, conn: sqlite3.Connection, table: str, doc: Doc) -> None:
        row = to_row(table, doc)
        names = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", row)

    def _select(
        self,
        table: str,
        where: str,
        params: Iterable[Any],
        tail: str = "",
        cols: str = "*",
        *,
        one: bool = False,
    ) -> list[Doc]:
        """Matching rows as documents; a row that cannot be decoded is skipped and recorded.

        With one=True (a read by id) that row is an error that names it instead.
        """
        sql = f"SELECT {cols} FROM {table}" + (f" WHERE {where}" if where else "") + tail
        with self._tx(write=False) as conn:
            rows = conn.execute(sql, tuple(params)).fetchall()
        docs = []
        for row in rows:
            try:
                docs.append(to_doc(table, row))
            except (ValueError, TypeError, KeyError) as exc:
                bad = self._unreadable.add(table, row_id(row), exc)
                if one:
                    raise self._unreadable_error(str(bad)) from None
        return docs

    def _unreadable_error(self, what: str) -> StoreError:
        return StoreError(
            f"a stored row in {self.path} cannot be decoded ({what}); it was written damaged or by "
            "another program — delete that evaluation, or restore the file from a backup"
        )

    def unreadable_rows(self) -> list[UnreadableRow]:
        return self._unreadable.rows()

    @staticmethod
    def _tuples(conn: sqlite3.Connection, sql: str, params: Iterable[Any]) -> list[tuple[Any, ...]]:
        """Plain tuples, not sqlite3.Row: the flat projections hand them on as they are."""
        cursor = conn.cursor()
        cursor.row_factory = None
        return cursor.execute(sql, tuple(params)).fetchall()

    @staticmethod
    def _where(filters: dict[str, Any]) -> tuple[str, list[Any]]:
        used = {k: v for k, v in filters.items() if v is not None}
        return " AND ".join(f"{k} = ?" for k in used), list(used.values())

    # --- identity -----------------------------------------------------------

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def ping(self) -> None:
        with self._tx(write=False) as conn:
            conn.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
