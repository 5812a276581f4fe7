"""The MongoDB store's plumbing: the client, timeouts that ride out an election, retries, indexes,
and documents in our shape (`id` for `_id`, every documented field present).

The only modules that import pymongo are this one and mongo.py; its errors become StoreError here.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import pymongo
from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from storybench_core.errors import StoreError
from storybench_core.redact import redact, redact_doc
from storybench_core.store.base import (
    Doc,
)
from storybench_core.store.schema import DATETIME_FIELDS, DOCUMENT_FIELDS, utc
from storybench_core.store.unreadable import UnreadableRow, UnreadableRows

T = TypeVar("T")

BATCH_SIZE = 500  # larger single batches have stalled nx-27017 for minutes
RETRY_DELAYS_S = (0.2, 0.5, 1.0)
# A replica-set election leaves no primary for up to ~10-12 s: server selection waits this long
# for the new one (and pymongo retries a read or write once), so a failover is a pause, not an
# error. Opening the store still fails fast when nothing answers (OPEN_TIMEOUT_S).
SERVER_SELECTION_TIMEOUT_MS = 20_000
CONNECT_TIMEOUT_MS = 5_000
SOCKET_TIMEOUT_MS = 60_000  # a read of 100k responses takes seconds; a dead socket must not hang
OPEN_TIMEOUT_S = 3.0

# collection -> list of (keys, unique)
INDEXES: dict[str, list[tuple[list[tuple[str, int]], bool]]] = {
    "evaluations": [([("status", ASCENDING), ("created_at", ASCENDING)], False),
                    ([("created_at", DESCENDING)], False)],
    "responses": [([("task_key", ASCENDING)], True),
                  ([("evaluation_id", ASCENDING), ("model_name", ASCENDING), ("sequence", ASCENDING),
                    ("run", ASCENDING), ("prompt_index", ASCENDING)], False)],
    "judgements": [([("response_id", ASCENDING), ("judge_model", ASCENDING), ("rubric_hash", ASCENDING),
                     ("attempt", ASCENDING)], True),
                   ([("evaluation_id", ASCENDING), ("judge_model", ASCENDING)], False)],
    "events": [([("evaluation_id", ASCENDING), ("seq", ASCENDING)], True)],
    "verdicts": [([("verdict_key", ASCENDING)], True),
                 ([("evaluation_id", ASCENDING), ("judge", ASCENDING)], False)],
    "votes": [([("voter", ASCENDING), ("pair_key", ASCENDING)], True),
              ([("evaluation_id", ASCENDING)], False)],
    "audit": [([("ts", DESCENDING)], False),
              ([("actor", ASCENDING), ("ts", DESCENDING)], False),
              ([("action", ASCENDING), ("ts", DESCENDING)], False)],
    "jobs": [([("status", ASCENDING), ("created_at", ASCENDING)], False),
             ([("evaluation_id", ASCENDING), ("created_at", DESCENDING)], False)],
}  # fmt: skip

RESPONSE_ORDER = [("evaluation_id", 1), ("model_name", 1), ("sequence", 1), ("run", 1), ("prompt_index", 1)]


def new_id() -> str:
    return uuid.uuid4().hex


def now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def clean(doc: Doc) -> Doc:
    """Top-level NaN becomes None (a failed judgement has no score), as in the SQLite store.

    Every write passes through here: known secrets are masked on the way in.
    """
    doc = redact_doc(doc)
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in doc.items()}


def to_mongo(doc: Doc) -> Doc:
    out = clean(doc)
    out["_id"] = out.pop("id")
    return out


def projected_score(doc: Doc, criterion: str) -> Any:
    """One criterion's score from a judgement projected on scores.<criterion>.score (None if absent)."""
    path = f"scores.{criterion}.score"
    if path in doc:
        return doc[path]  # nx-27017 returns a projected sub-field under its dotted path, unnested
    scores = doc.get("scores")
    entry = scores.get(criterion) if isinstance(scores, dict) else None
    return entry.get("score") if isinstance(entry, dict) else None


class MongoBase:
    """Client, retries, indexes and document shaping of a MongoDB store."""

    def __init__(
        self, uri: str, db_name: str = "storybench", *, timeout_ms: int = SERVER_SELECTION_TIMEOUT_MS
    ) -> None:
        self.uri = uri
        self.db_name = db_name
        self._unreadable = UnreadableRows()
        options: dict[str, Any] = {
            "tz_aware": True,
            "tzinfo": UTC,
            "appname": "storybench",
            "retryWrites": True,
            "retryReads": True,
            # A string another program stored as invalid UTF-8 reads with U+FFFD instead of failing
            # the whole listing it is in.
            "unicode_decode_error_handler": "replace",
        }
        lowered = uri.lower()
        # Timeouts that ride out an election, unless the URI chose its own.
        own_selection = "serverselectiontimeoutms" in lowered
        if not own_selection:
            options["serverSelectionTimeoutMS"] = timeout_ms
        if "connecttimeoutms" not in lowered:
            options["connectTimeoutMS"] = min(CONNECT_TIMEOUT_MS, timeout_ms)
        if "sockettimeoutms" not in lowered:
            options["socketTimeoutMS"] = SOCKET_TIMEOUT_MS
        try:
            self._client: MongoClient[Doc] = MongoClient(uri, **options)
        except (PyMongoError, ValueError) as exc:
            raise StoreError(
                f"invalid MongoDB URI {redact(uri)}: {exc}. Check STORYBENCH_MONGODB_URI."
            ) from exc
        self._db = self._client[db_name]
        try:
            # The first contact fails fast when nothing answers; later operations wait out elections.
            if own_selection:
                self.ping()
            else:
                with pymongo.timeout(OPEN_TIMEOUT_S):
                    self.ping()
            self.ensure_indexes()
        except StoreError:
            self._client.close()
            raise

    # --- plumbing -----------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one database operation, retrying transient network errors with backoff."""
        for attempt in range(len(RETRY_DELAYS_S) + 1):
            try:
                return fn()
            except DuplicateKeyError:
                raise  # callers turn it into a message about their own key
            except (ServerSelectionTimeoutError, ExecutionTimeout) as exc:
                raise StoreError(
                    f"cannot reach MongoDB at {redact(self.uri)} ({what}): no server answered "
                    "within the timeout. Check that it is running and that STORYBENCH_MONGODB_URI "
                    "is right."
                ) from exc
            except AutoReconnect as exc:  # includes NetworkTimeout
                if attempt == len(RETRY_DELAYS_S):
                    raise StoreError(
                        f"lost the connection to MongoDB at {redact(self.uri)} ({what}) after "
                        f"{attempt + 1} tries: {exc}. Check the network and STORYBENCH_MONGODB_URI."
                    ) from exc
                time.sleep(RETRY_DELAYS_S[attempt])
            except ConnectionFailure as exc:
                raise StoreError(
                    f"cannot connect to MongoDB at {redact(self.uri)} ({what}): {exc}. "
                    "Check STORYBENCH_MONGODB_URI (host, credentials, TLS)."
                ) from exc
            except PyMongoError as exc:
                raise StoreError(f"MongoDB at {redact(self.uri)} failed ({what}): {exc}") from exc
        raise AssertionError("unreachable")

    def _doc(self, collection: str, raw: Doc | None) -> Doc | None:
        """Our shape: `id` instead of `_id`, every documented field present."""
        if raw is None:
            return None
        raw = dict(raw)
        _id = raw.pop("_id", None)
        doc: Doc = dict.fromkeys(DOCUMENT_FIELDS[collection])
        doc.update(raw)
        if "id" in doc:
            doc["id"] = _id
        for name in DATETIME_FIELDS[collection]:
            if isinstance(doc[name], str):
                # nx-27017 0.8.1 stores a top-level datetime given to $set as naive UTC text;
                # MongoDB never does. Repair the documented fields on the way out.
                doc[name] = utc(datetime.fromisoformat(doc[name]))
            elif doc[name] is not None and not isinstance(doc[name], datetime):
                raise TypeError(f"{name} is a {type(doc[name]).__name__}, not a date")
        return doc

    def _docs(self, collection: str, raws: Iterable[Doc], *, one: bool = False) -> list[Doc]:
        """Our shape for each raw document; one that cannot be decoded is skipped and recorded."""
        docs = []
        for raw in raws:
            try:
                docs.append(self._doc(collection, raw) or {})
            except (ValueError, TypeError, KeyError) as exc:
                bad = self._unreadable.add(collection, raw.get("_id", "?"), exc)
                if one:
                    raise StoreError(
                        f"a stored document in MongoDB {redact(self.uri)} cannot be decoded ({bad}); it "
                        "was written damaged or by another program — delete that evaluation or repair it"
                    ) from None
        return docs

    def unreadable_rows(self) -> list[UnreadableRow]:
        return self._unreadable.rows()

    def _find(
        self,
        collection: str,
        query: Doc,
        sort: list[tuple[str, int]],
        limit: int | None = None,
        projection: Doc | None = None,
        *,
        one: bool = False,
    ) -> list[Doc]:
        def run() -> list[Doc]:
            cursor = self._db[collection].find(query, projection).sort(sort)
            if limit is not None:
                cursor = cursor.limit(limit)
            return list(cursor)

        return self._docs(collection, self._call(f"read {collection}", run), one=one)

    def _rows(self, collection: str, query: Doc, projection: Doc, sort: list[tuple[str, int]]) -> list[Doc]:
        """Raw projected documents, fetched in BATCH_SIZE batches."""
        return self._call(
            f"read {collection}",
            lambda: list(self._db[collection].find(query, projection).sort(sort).batch_size(BATCH_SIZE)),
        )

    @staticmethod
    def _filters(**filters: Any) -> Doc:
        return {k: v for k, v in filters.items() if v is not None}

    def ensure_indexes(self) -> None:
        """Create the indexes (idempotent); also the first contact with the server."""
        for collection, specs in INDEXES.items():
            for keys, unique in specs:
                name = "_".join(k for k, _ in keys) + ("_unique" if unique else "")
                self._call(
                    f"create index {collection}.{name}",
                    partial(self._db[collection].create_index, keys, unique=unique, name=name),
                )

    # --- identity -----------------------------------------------------------

    def describe(self) -> str:
        return f"{redact(self.uri)} (database {self.db_name})"

    def ping(self) -> None:
        self._call("ping", lambda: self._client.admin.command("ping"))

    def close(self) -> None:
        self._client.close()
