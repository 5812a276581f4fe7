"""The SQLite store's schema and value encoding: columns, numbered migrations, rows ↔ documents.

Queried fields are real columns; nested values (config, messages, scores...) are JSON text; fields
we don't know travel in an `extra` JSON column, so any document round-trips. Datetimes are
ISO-8601 UTC text with millisecond precision, the same precision MongoDB keeps. DOCUMENT_FIELDS
and DATETIME_FIELDS are the documented fields of each collection for both backends.
"""

from __future__ import annotations

import json
import math
import sqlite3
import uuid
from datetime import UTC, datetime
from typing import Any

from storybench_core.errors import StoreError
from storybench_core.redact import redact_doc
from storybench_core.store.base import Doc

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

SQL_TYPES = {"text": "TEXT", "int": "INTEGER", "real": "REAL", "dt": "TEXT", "json": "TEXT"}


def create_table(name: str, constraints: str = "") -> str:
    later = ADDED_COLUMNS.get(name, ())
    cols = [f"{col} {SQL_TYPES[kind]}" for col, kind in COLUMNS[name].items() if col not in later]
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
            create_table("evaluations", "PRIMARY KEY (id)"),
            create_table("responses", "PRIMARY KEY (id), UNIQUE (task_key)"),
            create_table(
                "judgements", "PRIMARY KEY (id), UNIQUE (response_id, judge_model, rubric_hash, attempt)"
            ),
            create_table("events", "PRIMARY KEY (evaluation_id, seq)"),
            create_table("verdicts", "PRIMARY KEY (id), UNIQUE (verdict_key)"),
            create_table("votes", "PRIMARY KEY (id), UNIQUE (voter, pair_key)"),
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
            create_table("audit", "PRIMARY KEY (id)"),
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
            create_table("jobs", "PRIMARY KEY (id)"),
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


def dt_text(value: datetime) -> str:
    return utc(value).isoformat(timespec="milliseconds")


def json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$date": dt_text(value)}
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$date" in obj:
        return datetime.fromisoformat(obj["$date"])
    return obj


def dumps(value: Any) -> str:
    return json.dumps(value, default=json_default, ensure_ascii=False)


def loads(text: str) -> Any:
    return json.loads(text, object_hook=json_hook)


def encode(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "dt":
        if not isinstance(value, datetime):
            raise StoreError(f"expected a datetime, got {value!r}; pass datetime.now(UTC)")
        return dt_text(value)
    if kind == "json":
        return dumps(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def decode(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "dt":
        return datetime.fromisoformat(value)
    if kind == "json":
        return loads(value)
    return value


def count_words(text: str | None) -> int:
    """Whitespace-separated words (registered in SQL as storybench_words)."""
    return len(text.split()) if text else 0


def stored_words(value: Any) -> int | None:
    """A response document's own `words` field as an int, or None when it holds no usable number."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return int(value)
    return None


def response_words(doc: Doc) -> int:
    """The responses.words column: the document's own `words` when it has one, else counted."""
    words = stored_words(doc.get("words"))
    return count_words(doc.get("response")) if words is None else words


def to_row(table: str, doc: Doc) -> dict[str, Any]:
    """Split a document into column values plus the JSON of its unknown fields (secrets masked)."""
    doc = redact_doc(doc)  # the write boundary: no known secret reaches the file
    cols = COLUMNS[table]
    row = {col: encode(kind, doc.get(col)) for col, kind in cols.items()}
    extra = {
        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in doc.items() if k not in cols
    }
    row["extra"] = dumps(extra) if extra else None
    if table == "responses":
        row["words"] = response_words(doc)  # derived; a given `words` still round-trips in extra
    return row


# JSON escapes these in object keys, and a json_extract path label cannot hold them.
PATH_UNSAFE = frozenset('"\\') | {chr(i) for i in range(32)}


def score_sql(criterion: str) -> tuple[str, str]:
    """SQL reading one criterion's score out of judgements.scores, and its parameter."""
    if PATH_UNSAFE.isdisjoint(criterion):
        return "json_extract(scores, ?)", f'$."{criterion}".score'
    return "(SELECT json_extract(value, '$.score') FROM json_each(scores) WHERE key = ?)", criterion


def to_doc(table: str, row: sqlite3.Row) -> Doc:
    cols = COLUMNS[table]
    keys = row.keys()
    doc: Doc = {col: decode(kind, row[col]) for col, kind in cols.items() if col in keys}
    if row["extra"]:
        doc.update(loads(row["extra"]))
    return doc


def row_id(row: sqlite3.Row) -> str:
    keys = row.keys()
    if "id" in keys:
        return str(row["id"])
    return f"{row['evaluation_id']}#{row['seq']}" if "seq" in keys else "?"


def new_id() -> str:
    return uuid.uuid4().hex


def now() -> datetime:
    return utc(datetime.now(UTC))
