"""SQLite store: the default backend, one file under STORYBENCH_HOME.

Queried fields are real columns; nested values (config, messages, scores...)
are JSON text; fields we don't know travel in an `extra` JSON column, so any
document round-trips. `responses.words` is derived, not a document field: the
response's own `words`, else its count, so the results views read it from an
index without touching the text. One connection guarded by a lock serves every thread
of this process (Streamlit spawns many short-lived threads, so a connection
per thread would leak); WAL and busy_timeout let other processes (a separate
`storybench worker`) share the file. Datetimes are stored as ISO-8601 UTC
text with millisecond precision, the same precision MongoDB keeps.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storybench_core.errors import DuplicateError, LeaseLost, StoreError
from storybench_core.redact import redact_doc
from storybench_core.store.base import (
    HEAVY_EVALUATION_FIELDS,
    JUDGEMENT_SCORE_FIELDS,
    RESPONSE_STAT_FIELDS,
    Doc,
    Lease,
)
from storybench_core.store.unreadable import UnreadableRow, UnreadableRows

# field -> kind. Kinds: text, int, real, dt (datetime), json (nested value).
COLUMNS: dict[str, dict[str, str]] = {
    "evaluations": {
        "id": "text", "name": "text", "config": "json", "config_hash": "text", "status": "text",
        "created_at": "dt", "started_at": "dt", "finished_at": "dt", "total_tasks": "int",
        "completed_tasks": "int", "failed_tasks": "int", "worker_id": "text", "heartbeat_at": "dt",
        "error": "text", "archived_at": "dt", "lease": "int",
    },
    "responses": {
        "id": "text", "evaluation_id": "text", "task_key": "text", "model_name": "text",
        "model_ref": "json", "sequence": "text", "run": "int", "prompt_index": "int",
        "prompt_name": "text", "prompt_text": "text", "messages": "json", "response": "text",
        "finish_reason": "text", "prompt_tokens": "int", "completion_tokens": "int",
        "generation_time_s": "real", "tokens_per_s": "real", "seed": "int", "created_at": "dt",
        "error": "text",
    },
    "judgements": {
        "id": "text", "response_id": "text", "evaluation_id": "text", "judge_model": "text",
        "rubric_hash": "text", "attempt": "int", "scores": "json", "overall": "real",
        "raw_output": "text", "created_at": "dt", "error": "text",
    },
    "events": {
        "evaluation_id": "text", "seq": "int", "ts": "dt", "level": "text", "message": "text",
    },
    "verdicts": {
        "id": "text", "evaluation_id": "text", "verdict_key": "text", "pair_key": "text",
        "judge": "text", "created_at": "dt",
    },
    "votes": {
        "id": "text", "evaluation_id": "text", "voter": "text", "pair_key": "text", "created_at": "dt",
    },
    "audit": {
        "id": "text", "ts": "dt", "actor": "text", "actor_name": "text", "role": "text",
        "source": "text", "action": "text", "target": "text", "details": "json",
    },
    "jobs": {
        "id": "text", "kind": "text", "evaluation_id": "text", "label": "text", "params": "json",
        "status": "text", "created_at": "dt", "started_at": "dt", "finished_at": "dt",
        "worker_id": "text", "heartbeat_at": "dt", "lease": "int", "error": "text", "queued_by": "text",
    },
}  # fmt: skip

# Columns a later migration adds with ALTER TABLE, so the CREATE TABLE of migration 1 leaves them out
# (a released migration must build the same table forever).
ADDED_COLUMNS: dict[str, tuple[str, ...]] = {"evaluations": ("archived_at", "lease")}

# The documented fields of each collection; both backends return every one of them
# (None when unset), so callers see the same document shape everywhere.
DOCUMENT_FIELDS: dict[str, tuple[str, ...]] = {name: tuple(cols) for name, cols in COLUMNS.items()}
DATETIME_FIELDS: dict[str, tuple[str, ...]] = {
    name: tuple(col for col, kind in cols.items() if kind == "dt") for name, cols in COLUMNS.items()
}

_SQL_TYPES = {"text": "TEXT", "int": "INTEGER", "real": "REAL", "dt": "TEXT", "json": "TEXT"}


def _create_table(name: str, constraints: str = "") -> str:
    later = ADDED_COLUMNS.get(name, ())
    cols = [f"{col} {_SQL_TYPES[kind]}" for col, kind in COLUMNS[name].items() if col not in later]
    cols.append("extra TEXT")
    if constraints:
        cols.append(constraints)
    return f"CREATE TABLE {name} ({', '.join(cols)})"


# Numbered migrations, applied in order, each in one transaction and recorded in
# schema_migrations. Never edit a released migration: append a new one.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "initial tables",
        [
            _create_table("evaluations", "PRIMARY KEY (id)"),
            _create_table("responses", "PRIMARY KEY (id), UNIQUE (task_key)"),
            _create_table(
                "judgements", "PRIMARY KEY (id), UNIQUE (response_id, judge_model, rubric_hash, attempt)"
            ),
            _create_table("events", "PRIMARY KEY (evaluation_id, seq)"),
            _create_table("verdicts", "PRIMARY KEY (id), UNIQUE (verdict_key)"),
            _create_table("votes", "PRIMARY KEY (id), UNIQUE (voter, pair_key)"),
        ],
    ),
    (
        2,
        "query indexes",
        [
            "CREATE INDEX evaluations_status_created ON evaluations (status, created_at)",
            "CREATE INDEX evaluations_created ON evaluations (created_at)",
            "CREATE INDEX responses_order"
            " ON responses (evaluation_id, model_name, sequence, run, prompt_index)",
            "CREATE INDEX judgements_evaluation ON judgements (evaluation_id, judge_model)",
            "CREATE INDEX verdicts_evaluation ON verdicts (evaluation_id, judge)",
            "CREATE INDEX votes_evaluation ON votes (evaluation_id, voter)",
        ],
    ),
    (
        3,
        "response words and results indexes",
        [
            # A derived column (not a document field): the document's `words`, else its count.
            "ALTER TABLE responses ADD COLUMN words INTEGER",
            "UPDATE responses SET words = CASE WHEN json_type(extra, '$.words') IN ('integer', 'real')"
            " THEN CAST(json_extract(extra, '$.words') AS INTEGER) ELSE storybench_words(response) END",
            # Covers list_response_stats, so it never reads the response text or messages.
            "CREATE INDEX responses_stats ON responses (evaluation_id, model_name, sequence, run,"
            " prompt_index, id, prompt_name, finish_reason, prompt_tokens, completion_tokens,"
            " generation_time_s, tokens_per_s, words, error)",
            "CREATE INDEX judgements_evaluation_created ON judgements (evaluation_id, created_at, id)",
        ],
    ),
    (
        4,
        "audit trail and archived evaluations",
        [
            _create_table("audit", "PRIMARY KEY (id)"),
            "CREATE INDEX audit_ts ON audit (ts, id)",
            "CREATE INDEX audit_actor_ts ON audit (actor, ts)",
            "CREATE INDEX audit_action_ts ON audit (action, ts)",
            # An archived evaluation keeps its data but leaves the leaderboards.
            "ALTER TABLE evaluations ADD COLUMN archived_at TEXT",
        ],
    ),
    (
        5,
        "job leases",
        # Incremented by every claim: a worker's writes match only while its epoch is current.
        ["ALTER TABLE evaluations ADD COLUMN lease INTEGER"],
    ),
    (
        6,
        "jobs other than runs (judging, pairwise comparison)",
        [
            _create_table("jobs", "PRIMARY KEY (id)"),
            "CREATE INDEX jobs_status_created ON jobs (status, created_at)",
            "CREATE INDEX jobs_evaluation ON jobs (evaluation_id, created_at)",
        ],
    ),
]


# --- value encoding ---------------------------------------------------------


def utc(value: datetime) -> datetime:
    """Aware UTC with millisecond precision (naive values are taken as UTC, like BSON does)."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _dt_text(value: datetime) -> str:
    return utc(value).isoformat(timespec="milliseconds")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$date": _dt_text(value)}
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _json_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$date" in obj:
        return datetime.fromisoformat(obj["$date"])
    return obj


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def _loads(text: str) -> Any:
    return json.loads(text, object_hook=_json_hook)


def _encode(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "dt":
        if not isinstance(value, datetime):
            raise StoreError(f"expected a datetime, got {value!r}; pass datetime.now(UTC)")
        return _dt_text(value)
    if kind == "json":
        return _dumps(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _decode(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "dt":
        return datetime.fromisoformat(value)
    if kind == "json":
        return _loads(value)
    return value


def count_words(text: str | None) -> int:
    """Whitespace-separated words (registered in SQL as storybench_words)."""
    return len(text.split()) if text else 0


def stored_words(value: Any) -> int | None:
    """A response document's own `words` field as an int, or None when it holds no usable number."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return int(value)
    return None


def _response_words(doc: Doc) -> int:
    """The responses.words column: the document's own `words` when it has one, else counted."""
    words = stored_words(doc.get("words"))
    return count_words(doc.get("response")) if words is None else words


def _to_row(table: str, doc: Doc) -> dict[str, Any]:
    """Split a document into column values plus the JSON of its unknown fields (secrets masked)."""
    doc = redact_doc(doc)  # the write boundary: no known secret reaches the file
    cols = COLUMNS[table]
    row = {col: _encode(kind, doc.get(col)) for col, kind in cols.items()}
    extra = {
        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in doc.items() if k not in cols
    }
    row["extra"] = _dumps(extra) if extra else None
    if table == "responses":
        row["words"] = _response_words(doc)  # derived; a given `words` still round-trips in extra
    return row


# JSON escapes these in object keys, and a json_extract path label cannot hold them.
_PATH_UNSAFE = frozenset('"\\') | {chr(i) for i in range(32)}


def _score_sql(criterion: str) -> tuple[str, str]:
    """SQL reading one criterion's score out of judgements.scores, and its parameter."""
    if _PATH_UNSAFE.isdisjoint(criterion):
        return "json_extract(scores, ?)", f'$."{criterion}".score'
    return "(SELECT json_extract(value, '$.score') FROM json_each(scores) WHERE key = ?)", criterion


def _to_doc(table: str, row: sqlite3.Row) -> Doc:
    cols = COLUMNS[table]
    keys = row.keys()
    doc: Doc = {col: _decode(kind, row[col]) for col, kind in cols.items() if col in keys}
    if row["extra"]:
        doc.update(_loads(row["extra"]))
    return doc


def _row_id(row: sqlite3.Row) -> str:
    keys = row.keys()
    if "id" in keys:
        return str(row["id"])
    return f"{row['evaluation_id']}#{row['seq']}" if "seq" in keys else "?"


def _new_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return utc(datetime.now(UTC))


class SQLiteStore:
    """Store backed by one SQLite file (WAL mode, shared safely by threads and processes)."""

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
                    (version, name, _dt_text(_now())),
                )

    def _insert(self, conn: sqlite3.Connection, table: str, doc: Doc) -> None:
        row = _to_row(table, doc)
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
                docs.append(_to_doc(table, row))
            except (ValueError, TypeError, KeyError) as exc:
                bad = self._unreadable.add(table, _row_id(row), exc)
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

    # --- evaluations --------------------------------------------------------

    def create_evaluation(self, doc: Doc) -> str:
        doc = {**doc, "id": doc.get("id") or _new_id()}
        doc.setdefault("created_at", _now())
        doc.setdefault("status", "queued")
        with self._tx() as conn:
            try:
                self._insert(conn, "evaluations", doc)
            except sqlite3.IntegrityError as exc:
                raise DuplicateError(
                    f"an evaluation with id {doc['id']} already exists in {self.path}"
                ) from exc
        return doc["id"]

    def get_evaluation(self, evaluation_id: str, *, brief: bool = False) -> Doc | None:
        found = self._select(
            "evaluations", "id = ?", [evaluation_id], cols=self._evaluation_cols(brief), one=True
        )
        return found[0] if found else None

    def list_evaluations(
        self, statuses: Iterable[str] | None = None, limit: int | None = None, *, brief: bool = False
    ) -> list[Doc]:
        where, params = "", []
        if statuses is not None:
            wanted = list(statuses)
            where = f"status IN ({', '.join('?' * len(wanted))})" if wanted else "0"
            params = wanted
        tail = " ORDER BY created_at DESC, id DESC" + (f" LIMIT {int(limit)}" if limit is not None else "")
        return self._select("evaluations", where, params, tail, cols=self._evaluation_cols(brief))

    @staticmethod
    def _evaluation_cols(brief: bool) -> str:
        if not brief:
            return "*"
        return ", ".join([c for c in COLUMNS["evaluations"] if c not in HEAVY_EVALUATION_FIELDS] + ["extra"])

    def _set_fields(
        self,
        table: str,
        evaluation_id: str,
        fields: Doc,
        from_statuses: list[str] | None,
        lease: Lease | None,
    ) -> bool:
        """One UPDATE of just the given fields (known columns directly, others inside `extra` with
        json_set), guarded by status and lease: a progress write never rewrites the config."""
        fields = redact_doc(fields)  # the write boundary: no known secret reaches the file
        if fields.pop("id", evaluation_id) != evaluation_id:
            raise StoreError(f"cannot change the id of {table[:-1]} {evaluation_id}")
        cols = COLUMNS[table]
        sets: list[str] = []
        params: list[Any] = []
        extra_args: list[Any] = []
        for key, value in fields.items():
            if key in cols:
                sets.append(f"{key} = ?")
                params.append(_encode(cols[key], value))
            elif _PATH_UNSAFE.isdisjoint(key):
                if isinstance(value, float) and math.isnan(value):
                    value = None
                extra_args += [f'$."{key}"', _dumps(value)]
            else:
                raise StoreError(f"field name {key!r} cannot be stored: control characters or quotes")
        if extra_args:
            pairs = ", ".join("?, json(?)" for _ in range(len(extra_args) // 2))
            sets.append(f"extra = json_set(COALESCE(extra, '{{}}'), {pairs})")
            params += extra_args
        where: list[str] = ["id = ?"]
        wparams: list[Any] = [evaluation_id]
        if from_statuses is not None:
            where.append(f"status IN ({', '.join('?' * len(from_statuses))})" if from_statuses else "0")
            wparams += from_statuses
        if lease is not None:
            where.append("COALESCE(worker_id, '') = ? AND COALESCE(lease, 0) = ?")
            wparams += [lease.owner, lease.epoch]
        with self._tx() as conn:
            if sets:
                sql = f"UPDATE {table} SET {', '.join(sets)} WHERE {' AND '.join(where)}"
                changed = conn.execute(sql, params + wparams).rowcount > 0
            else:
                sql = f"SELECT 1 FROM {table} WHERE {' AND '.join(where)}"
                changed = conn.execute(sql, wparams).fetchone() is not None
        if not changed and from_statuses is None and lease is None:
            raise StoreError(f"{table[:-1]} {evaluation_id} not found in {self.path} (was it deleted?)")
        return changed

    def update_evaluation(self, evaluation_id: str, fields: Doc, *, lease: Lease | None = None) -> bool:
        return self._set_fields("evaluations", evaluation_id, fields, None, lease)

    def transition_evaluation(
        self, evaluation_id: str, from_statuses: Iterable[str], fields: Doc, *, lease: Lease | None = None
    ) -> bool:
        return self._set_fields("evaluations", evaluation_id, fields, list(from_statuses), lease)

    def clock(self) -> datetime:
        # One file is one machine's: every process sharing it reads this host's clock.
        return _now()

    def heartbeat(self, evaluation_id: str, lease: Lease) -> bool:
        return self._heartbeat("evaluations", evaluation_id, lease)

    def _heartbeat(self, table: str, row_id: str, lease: Lease) -> bool:
        with self._tx() as conn:
            cursor = conn.execute(
                f"UPDATE {table} SET heartbeat_at = ? WHERE id = ? AND COALESCE(worker_id, '') = ? "
                "AND COALESCE(lease, 0) = ? AND status IN ('running', 'stopping')",
                (_dt_text(self.clock()), row_id, lease.owner, lease.epoch),
            )
            return cursor.rowcount > 0

    def claim_next_evaluation(self, worker_id: str, *, evaluation_id: str | None = None) -> Doc | None:
        return self._claim("evaluations", worker_id, evaluation_id)

    def _claim(self, table: str, worker_id: str, row_id: str | None) -> Doc | None:
        stamp = _dt_text(self.clock())
        with self._tx() as conn:
            if row_id is None:
                row = conn.execute(
                    f"SELECT id FROM {table} WHERE status = 'queued' ORDER BY created_at, id LIMIT 1"
                ).fetchone()
            else:
                row = conn.execute(
                    f"SELECT id FROM {table} WHERE status = 'queued' AND id = ?", (row_id,)
                ).fetchone()
            if row is None:
                return None
            conn.execute(
                f"UPDATE {table} SET status = 'running', worker_id = ?, heartbeat_at = ?, "
                "lease = COALESCE(lease, 0) + 1, started_at = COALESCE(started_at, ?) WHERE id = ?",
                (worker_id, stamp, stamp, row["id"]),
            )
            claimed = conn.execute(f"SELECT * FROM {table} WHERE id = ?", (row["id"],)).fetchone()
            try:
                return _to_doc(table, claimed)
            except (ValueError, TypeError, KeyError) as exc:
                # A damaged queued row must not wedge the queue: fail it, the next poll claims the next.
                bad = self._unreadable.add(table, row["id"], exc)
                conn.execute(
                    f"UPDATE {table} SET status = 'failed', worker_id = NULL, error = ? WHERE id = ?",
                    (f"the stored {table[:-1]} cannot be decoded ({bad.reason})", row["id"]),
                )
                return None

    # --- jobs other than runs ----------------------------------------------

    def create_job(self, doc: Doc) -> str:
        doc = {**doc, "id": doc.get("id") or _new_id()}
        doc.setdefault("created_at", _now())
        doc.setdefault("status", "queued")
        with self._tx() as conn:
            try:
                self._insert(conn, "jobs", doc)
            except sqlite3.IntegrityError as exc:
                raise DuplicateError(f"a job with id {doc['id']} already exists in {self.path}") from exc
        return doc["id"]

    def get_job(self, job_id: str) -> Doc | None:
        found = self._select("jobs", "id = ?", [job_id], one=True)
        return found[0] if found else None

    def list_jobs(
        self,
        *,
        evaluation_id: str | None = None,
        statuses: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Doc]:
        where, params = self._where({"evaluation_id": evaluation_id})
        if statuses is not None:
            wanted = list(statuses)
            clause = f"status IN ({', '.join('?' * len(wanted))})" if wanted else "0"
            where = f"{where} AND {clause}" if where else clause
            params += wanted
        tail = " ORDER BY created_at DESC, id DESC" + (f" LIMIT {int(limit)}" if limit is not None else "")
        return self._select("jobs", where, params, tail)

    def update_job(self, job_id: str, fields: Doc, *, lease: Lease | None = None) -> bool:
        return self._set_fields("jobs", job_id, fields, None, lease)

    def transition_job(
        self, job_id: str, from_statuses: Iterable[str], fields: Doc, *, lease: Lease | None = None
    ) -> bool:
        return self._set_fields("jobs", job_id, fields, list(from_statuses), lease)

    def claim_next_job(self, worker_id: str, *, job_id: str | None = None) -> Doc | None:
        return self._claim("jobs", worker_id, job_id)

    def heartbeat_job(self, job_id: str, lease: Lease) -> bool:
        return self._heartbeat("jobs", job_id, lease)

    def delete_evaluation(self, evaluation_id: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "DELETE FROM judgements WHERE evaluation_id = ? OR response_id IN "
                "(SELECT id FROM responses WHERE evaluation_id = ?)",
                (evaluation_id, evaluation_id),
            )
            for table in ("responses", "events", "verdicts", "votes", "jobs"):
                conn.execute(f"DELETE FROM {table} WHERE evaluation_id = ?", (evaluation_id,))
            conn.execute("DELETE FROM evaluations WHERE id = ?", (evaluation_id,))

    # --- responses ----------------------------------------------------------

    def upsert_response(self, doc: Doc, *, lease: Lease | None = None) -> str:
        task_key = doc.get("task_key")
        if not task_key:
            raise StoreError("a response needs a task_key (evaluation/model/sequence/run/prompt)")
        doc = dict(doc)
        doc.setdefault("created_at", _now())
        with self._tx() as conn:
            if lease is not None:
                # Checked inside the write transaction: a compare-and-set on the evaluation's lease.
                held = conn.execute(
                    "SELECT 1 FROM evaluations WHERE id = ? AND COALESCE(worker_id, '') = ?"
                    " AND COALESCE(lease, 0) = ?",
                    (doc.get("evaluation_id"), lease.owner, lease.epoch),
                ).fetchone()
                if held is None:
                    raise LeaseLost(f"{lease.owner} no longer holds evaluation {doc.get('evaluation_id')}")
            old = conn.execute("SELECT id FROM responses WHERE task_key = ?", (task_key,)).fetchone()
            if old is None:
                doc["id"] = doc.get("id") or _new_id()
                self._insert(conn, "responses", doc)
            else:
                doc["id"] = old["id"]
                row = _to_row("responses", doc)
                sets = ", ".join(f"{k} = :{k}" for k in row if k != "id")
                conn.execute(f"UPDATE responses SET {sets} WHERE id = :id", row)
        return doc["id"]

    def get_response(self, response_id: str) -> Doc | None:
        found = self._select("responses", "id = ?", [response_id], one=True)
        return found[0] if found else None

    def list_responses(
        self,
        evaluation_id: str | None = None,
        *,
        model_name: str | None = None,
        sequence: str | None = None,
        run: int | None = None,
        prompt_index: int | None = None,
        include_messages: bool = True,
    ) -> list[Doc]:
        where, params = self._where(
            {
                "evaluation_id": evaluation_id,
                "model_name": model_name,
                "sequence": sequence,
                "run": run,
                "prompt_index": prompt_index,
            }
        )
        cols = (
            "*"
            if include_messages
            else ", ".join(c for c in [*COLUMNS["responses"], "extra"] if c != "messages")
        )
        tail = " ORDER BY evaluation_id, model_name, sequence, run, prompt_index"
        return self._select("responses", where, params, tail, cols)

    def list_response_stats(self, evaluation_id: str | None = None) -> list[tuple[Any, ...]]:
        # Read from the responses_stats covering index alone; rows whose words column is
        # still empty (written by a Storybench from before migration 3) are counted after.
        cols = ", ".join(RESPONSE_STAT_FIELDS)
        where, params = self._where({"evaluation_id": evaluation_id})
        where = f" WHERE {where}" if where else ""
        order = " ORDER BY evaluation_id, model_name, sequence, run, prompt_index"
        fix = (
            "SELECT id, CASE WHEN NOT json_valid(extra) THEN storybench_words(response)"
            " WHEN json_type(extra, '$.words') IN ('integer', 'real')"
            " THEN CAST(json_extract(extra, '$.words') AS INTEGER) ELSE storybench_words(response) END"
            f" FROM responses{where}{' AND' if where else ' WHERE'} words IS NULL"
        )
        with self._tx(write=False) as conn:
            rows = self._tuples(conn, f"SELECT {cols} FROM responses{where}{order}", params)
            missing = dict(self._tuples(conn, fix, params))
        if missing:
            at = RESPONSE_STAT_FIELDS.index("words")
            rows = [r if r[0] not in missing else (*r[:at], missing[r[0]], *r[at + 1 :]) for r in rows]
        return rows

    def count_responses(self, evaluation_id: str, *, errors: bool | None = None) -> int:
        sql = "SELECT COUNT(*) FROM responses WHERE evaluation_id = ?"
        if errors is True:
            sql += " AND error IS NOT NULL AND error != ''"
        elif errors is False:
            sql += " AND (error IS NULL OR error = '')"
        with self._tx(write=False) as conn:
            return int(conn.execute(sql, (evaluation_id,)).fetchone()[0])

    def completed_task_keys(self, evaluation_id: str) -> set[str]:
        with self._tx(write=False) as conn:
            rows = conn.execute(
                "SELECT task_key FROM responses WHERE evaluation_id = ? AND (error IS NULL OR error = '')",
                (evaluation_id,),
            ).fetchall()
        return {r[0] for r in rows}

    # --- judgements, verdicts, votes -----------------------------------------

    def _add_unique(self, table: str, doc: Doc, keys: tuple[str, ...], what: str) -> str:
        missing = [k for k in keys if doc.get(k) is None]
        if missing:
            raise StoreError(f"a {what} needs {', '.join(missing)} (part of its unique key)")
        doc = {**doc, "id": doc.get("id") or _new_id()}
        doc.setdefault("created_at", _now())
        with self._tx() as conn:
            try:
                self._insert(conn, table, doc)
            except sqlite3.IntegrityError as exc:
                key = ", ".join(f"{k}={doc[k]!r}" for k in keys)
                raise DuplicateError(f"a {what} with {key} already exists in {self.path}") from exc
        return doc["id"]

    def add_judgement(self, doc: Doc) -> str:
        keys = ("response_id", "judge_model", "rubric_hash", "attempt")
        return self._add_unique("judgements", doc, keys, "judgement")

    def list_judgements(
        self,
        evaluation_id: str | None = None,
        *,
        response_id: str | None = None,
        judge_model: str | None = None,
    ) -> list[Doc]:
        where, params = self._where(
            {"evaluation_id": evaluation_id, "response_id": response_id, "judge_model": judge_model}
        )
        return self._select("judgements", where, params, " ORDER BY created_at, id")

    def list_judgement_scores(
        self, evaluation_id: str | None, criteria: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        in_extra = ("retries", "structured_output")
        cols = [f"json_extract(extra, '$.{c}')" if c in in_extra else c for c in JUDGEMENT_SCORE_FIELDS]
        scores = [_score_sql(c) for c in criteria]
        where, params = self._where({"evaluation_id": evaluation_id})
        select = f"SELECT {', '.join(cols + [sql for sql, _ in scores])} FROM judgements"
        order = " ORDER BY created_at, id"
        with self._tx(write=False) as conn:
            try:
                return self._tuples(
                    conn,
                    select + (f" WHERE {where}" if where else "") + order,
                    [p for _, p in scores] + params,
                )
            except sqlite3.OperationalError as exc:
                if "malformed JSON" not in str(exc):
                    raise
            # Some row holds damaged JSON: record those rows and leave them out (the fast path
            # above does not pay for json_valid on every row).
            valid = "json_valid(COALESCE(scores, 'null')) AND json_valid(COALESCE(extra, 'null'))"
            bad_where = " AND ".join(w for w in (where, f"NOT ({valid})") if w)
            for (bad_id,) in self._tuples(conn, f"SELECT id FROM judgements WHERE {bad_where}", params):
                self._unreadable.add("judgements", bad_id, ValueError("scores or extra is not valid JSON"))
            good_where = " AND ".join(w for w in (where, valid) if w)
            return self._tuples(conn, f"{select} WHERE {good_where}{order}", [p for _, p in scores] + params)

    def add_verdict(self, doc: Doc) -> str:
        return self._add_unique("verdicts", doc, ("verdict_key",), "verdict")

    def list_verdicts(self, evaluation_id: str | None = None, *, judge: str | None = None) -> list[Doc]:
        where, params = self._where({"evaluation_id": evaluation_id, "judge": judge})
        return self._select("verdicts", where, params, " ORDER BY created_at, id")

    def add_vote(self, doc: Doc) -> str:
        return self._add_unique("votes", doc, ("voter", "pair_key"), "vote")

    def list_votes(self, evaluation_id: str | None = None, *, voter: str | None = None) -> list[Doc]:
        where, params = self._where({"evaluation_id": evaluation_id, "voter": voter})
        return self._select("votes", where, params, " ORDER BY created_at, id")

    # --- audit trail --------------------------------------------------------

    def add_audit(self, doc: Doc) -> str:
        doc = {**doc, "id": doc.get("id") or _new_id()}
        doc["ts"] = doc.get("ts") or _now()
        with self._tx() as conn:
            try:
                self._insert(conn, "audit", doc)
            except sqlite3.IntegrityError as exc:
                raise DuplicateError(
                    f"an audit entry with id {doc['id']} already exists in {self.path}"
                ) from exc
        return doc["id"]

    def list_audit(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[Doc]:
        where, params = self._where({"actor": actor, "action": action, "target": target})
        if since is not None:
            where = " AND ".join(w for w in (where, "ts >= ?") if w)
            params.append(_dt_text(since))
        tail = " ORDER BY ts DESC, id DESC" + (f" LIMIT {int(limit)}" if limit is not None else "")
        return self._select("audit", where, params, tail)

    # --- events -------------------------------------------------------------

    def append_event(self, evaluation_id: str, level: str, message: str, **fields: Any) -> int:
        with self._tx() as conn:
            seq = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE evaluation_id = ?", (evaluation_id,)
            ).fetchone()[0]
            doc = {
                **fields,
                "evaluation_id": evaluation_id,
                "seq": seq,
                "ts": fields.get("ts") or _now(),
                "level": level,
                "message": message,
            }
            self._insert(conn, "events", doc)
        return int(seq)

    def list_events(self, evaluation_id: str, after_seq: int = 0, limit: int | None = None) -> list[Doc]:
        tail = " ORDER BY seq" + (f" LIMIT {int(limit)}" if limit is not None else "")
        return self._select("events", "evaluation_id = ? AND seq > ?", [evaluation_id, after_seq], tail)
