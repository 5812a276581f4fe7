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

import math
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime
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
from storybench_core.store.schema import (
    COLUMNS,
    PATH_UNSAFE,
    dt_text,
    dumps,
    encode,
    new_id,
    now,
    score_sql,
    to_doc,
    to_row,
)
from storybench_core.store.sqlite_base import SQLiteBase


class SQLiteStore(SQLiteBase):
    """Store backed by one SQLite file (WAL mode, shared safely by threads and processes)."""

    # --- evaluations --------------------------------------------------------

    def create_evaluation(self, doc: Doc) -> str:
        return self._create_queued("evaluations", doc, "an evaluation")

    def _create_queued(self, table: str, doc: Doc, what: str) -> str:
        """Insert a run or job (id, created_at and status=queued filled in when missing)."""
        doc = {**doc, "id": doc.get("id") or new_id()}
        doc.setdefault("created_at", now())
        doc.setdefault("status", "queued")
        with self._tx() as conn:
            try:
                self._insert(conn, table, doc)
            except sqlite3.IntegrityError as exc:
                raise DuplicateError(f"{what} with id {doc['id']} already exists in {self.path}") from exc
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
                params.append(encode(cols[key], value))
            elif PATH_UNSAFE.isdisjoint(key):
                if isinstance(value, float) and math.isnan(value):
                    value = None
                extra_args += [f'$."{key}"', dumps(value)]
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
        return now()

    def heartbeat(self, evaluation_id: str, lease: Lease) -> bool:
        return self._heartbeat("evaluations", evaluation_id, lease)

    def _heartbeat(self, table: str, row_id: str, lease: Lease) -> bool:
        with self._tx() as conn:
            cursor = conn.execute(
                f"UPDATE {table} SET heartbeat_at = ? WHERE id = ? AND COALESCE(worker_id, '') = ? "
                "AND COALESCE(lease, 0) = ? AND status IN ('running', 'stopping')",
                (dt_text(self.clock()), row_id, lease.owner, lease.epoch),
            )
            return cursor.rowcount > 0

    def claim_next_evaluation(self, worker_id: str, *, evaluation_id: str | None = None) -> Doc | None:
        return self._claim("evaluations", worker_id, evaluation_id)

    def _claim(self, table: str, worker_id: str, row_id: str | None) -> Doc | None:
        stamp = dt_text(self.clock())
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
                return to_doc(table, claimed)
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
        return self._create_queued("jobs", doc, "a job")

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
        doc.setdefault("created_at", now())
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
                doc["id"] = doc.get("id") or new_id()
                self._insert(conn, "responses", doc)
            else:
                doc["id"] = old["id"]
                row = to_row("responses", doc)
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
        doc = {**doc, "id": doc.get("id") or new_id()}
        doc.setdefault("created_at", now())
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
        scores = [score_sql(c) for c in criteria]
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
        doc = {**doc, "id": doc.get("id") or new_id()}
        doc["ts"] = doc.get("ts") or now()
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
            params.append(dt_text(since))
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
                "ts": fields.get("ts") or now(),
                "level": level,
                "message": message,
            }
            self._insert(conn, "events", doc)
        return int(seq)

    def list_events(self, evaluation_id: str, after_seq: int = 0, limit: int | None = None) -> list[Doc]:
        tail = " ORDER BY seq" + (f" LIMIT {int(limit)}" if limit is not None else "")
        return self._select("events", "evaluation_id = ? AND seq > ?", [evaluation_id, after_seq], tail)
