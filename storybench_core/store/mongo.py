"""MongoDB store via pymongo: for a team sharing one database.

The only module that imports pymongo; its errors become StoreError here.
Documents keep our string id as `_id`. Unique indexes carry the invariants
(task_key, judgement attempt, event seq, verdict_key, vote), so several
workers on several machines can write without duplicates.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import partial
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import (
    DuplicateKeyError,
)

from storybench_core.errors import DuplicateError, LeaseLost, StoreError
from storybench_core.redact import redact
from storybench_core.store.base import (
    HEAVY_EVALUATION_FIELDS,
    JUDGEMENT_SCORE_FIELDS,
    RESPONSE_STAT_FIELDS,
    Doc,
    Lease,
)
from storybench_core.store.mongo_base import (
    BATCH_SIZE,
    RESPONSE_ORDER,
    MongoBase,
    clean,
    new_id,
    now,
    projected_score,
    to_mongo,
)
from storybench_core.store.schema import count_words, stored_words, utc


class MongoStore(MongoBase):
    """Store backed by a MongoDB database (or any server speaking its wire protocol)."""

    # --- evaluations --------------------------------------------------------

    def create_evaluation(self, doc: Doc) -> str:
        return self._create_queued("evaluations", doc, "an evaluation")

    def _create_queued(self, collection: str, doc: Doc, what: str) -> str:
        """Insert a run or job (id, created_at and status=queued filled in when missing)."""
        doc = {**doc, "id": doc.get("id") or new_id()}
        doc.setdefault("created_at", now())
        doc.setdefault("status", "queued")
        try:
            self._call(f"create {collection[:-1]}", lambda: self._db[collection].insert_one(to_mongo(doc)))
        except DuplicateKeyError as exc:
            raise DuplicateError(f"{what} with id {doc['id']} already exists") from exc
        return doc["id"]

    def get_evaluation(self, evaluation_id: str, *, brief: bool = False) -> Doc | None:
        found = self._find(
            "evaluations", {"_id": evaluation_id}, [("_id", 1)], projection=self._brief(brief), one=True
        )
        return self._without_heavy(found[0], brief) if found else None

    def list_evaluations(
        self, statuses: Iterable[str] | None = None, limit: int | None = None, *, brief: bool = False
    ) -> list[Doc]:
        query = {} if statuses is None else {"status": {"$in": list(statuses)}}
        found = self._find(
            "evaluations", query, [("created_at", -1), ("_id", -1)], limit, projection=self._brief(brief)
        )
        return [self._without_heavy(doc, brief) for doc in found]

    @staticmethod
    def _brief(brief: bool) -> Doc | None:
        return dict.fromkeys(HEAVY_EVALUATION_FIELDS, 0) if brief else None

    @staticmethod
    def _without_heavy(doc: Doc, brief: bool) -> Doc:
        """A brief document lacks the heavy fields, as in the SQLite store (not None: absent)."""
        if brief:
            for name in HEAVY_EVALUATION_FIELDS:
                doc.pop(name, None)
        return doc

    @staticmethod
    def _guarded(evaluation_id: str, from_statuses: Iterable[str] | None, lease: Lease | None) -> Doc:
        query: Doc = {"_id": evaluation_id}
        if from_statuses is not None:
            query["status"] = {"$in": list(from_statuses)}
        if lease is not None:
            query["worker_id"] = lease.owner or {"$in": ["", None]}
            # A job claimed before leases existed has none: epoch 0 matches it.
            query["lease"] = {"$in": [0, None]} if lease.epoch == 0 else lease.epoch
        return query

    def update_evaluation(self, evaluation_id: str, fields: Doc, *, lease: Lease | None = None) -> bool:
        return self._update("evaluations", evaluation_id, fields, lease)

    def _update(self, collection: str, row_id: str, fields: Doc, lease: Lease | None) -> bool:
        changed = self._set_fields(collection, row_id, self._guarded(row_id, None, lease), fields)
        if not changed and lease is None:
            raise StoreError(f"{collection[:-1]} {row_id} not found in MongoDB (was it deleted?)")
        return changed

    def transition_evaluation(
        self, evaluation_id: str, from_statuses: Iterable[str], fields: Doc, *, lease: Lease | None = None
    ) -> bool:
        query = self._guarded(evaluation_id, from_statuses, lease)
        return self._set_fields("evaluations", evaluation_id, query, fields)

    def _set_fields(self, collection: str, row_id: str, query: Doc, fields: Doc) -> bool:
        fields = clean(fields)
        if fields.pop("id", row_id) != row_id:
            raise StoreError(f"cannot change the id of {collection[:-1]} {row_id}")
        if not fields:
            found = self._call(
                f"find {collection}", lambda: self._db[collection].count_documents(query, limit=1)
            )
            return found > 0
        result = self._call(
            f"update {collection}", lambda: self._db[collection].update_one(query, {"$set": fields})
        )
        return result.matched_count > 0

    def clock(self) -> datetime:
        # The server's clock (hello.localTime), not this host's: workers on hosts with skewed
        # clocks then agree on whose heartbeat is stale.
        hello = self._call("read the server clock", lambda: self._client.admin.command("hello"))
        local = hello.get("localTime")
        return utc(local) if isinstance(local, datetime) else now()

    def heartbeat(self, evaluation_id: str, lease: Lease) -> bool:
        return self._heartbeat("evaluations", evaluation_id, lease)

    def _heartbeat(self, collection: str, row_id: str, lease: Lease) -> bool:
        query = self._guarded(row_id, ["running", "stopping"], lease)
        result = self._call(
            "heartbeat",
            lambda: self._db[collection].update_one(query, {"$currentDate": {"heartbeat_at": True}}),
        )
        return result.matched_count > 0

    def claim_next_evaluation(self, worker_id: str, *, evaluation_id: str | None = None) -> Doc | None:
        return self._claim("evaluations", worker_id, evaluation_id)

    def _claim(self, collection: str, worker_id: str, row_id: str | None) -> Doc | None:
        query: Doc = {"status": "queued"} if row_id is None else {"status": "queued", "_id": row_id}
        claimed = self._call(
            f"claim {collection[:-1]}",
            lambda: self._db[collection].find_one_and_update(
                query,
                {
                    "$set": {"status": "running", "worker_id": worker_id},
                    "$inc": {"lease": 1},
                    "$currentDate": {"heartbeat_at": True},
                },
                sort=[("created_at", ASCENDING), ("_id", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            ),
        )
        if claimed is None:
            return None
        if claimed.get("started_at") is None:
            # Only this worker owns it now, so a second step is safe; a requeued job keeps its start.
            start = claimed.get("heartbeat_at") or now()
            self._call(
                f"claim {collection[:-1]}",
                lambda: self._db[collection].update_one(
                    {"_id": claimed["_id"], "started_at": None}, {"$set": {"started_at": start}}
                ),
            )
            claimed["started_at"] = start
        return self._doc(collection, claimed)

    # --- jobs other than runs ----------------------------------------------

    def create_job(self, doc: Doc) -> str:
        return self._create_queued("jobs", doc, "a job")

    def get_job(self, job_id: str) -> Doc | None:
        found = self._find("jobs", {"_id": job_id}, [("_id", 1)], one=True)
        return found[0] if found else None

    def list_jobs(
        self,
        *,
        evaluation_id: str | None = None,
        statuses: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Doc]:
        query = self._filters(evaluation_id=evaluation_id)
        if statuses is not None:
            query["status"] = {"$in": list(statuses)}
        return self._find("jobs", query, [("created_at", -1), ("_id", -1)], limit)

    def update_job(self, job_id: str, fields: Doc, *, lease: Lease | None = None) -> bool:
        return self._update("jobs", job_id, fields, lease)

    def transition_job(
        self, job_id: str, from_statuses: Iterable[str], fields: Doc, *, lease: Lease | None = None
    ) -> bool:
        return self._set_fields("jobs", job_id, self._guarded(job_id, from_statuses, lease), fields)

    def claim_next_job(self, worker_id: str, *, job_id: str | None = None) -> Doc | None:
        return self._claim("jobs", worker_id, job_id)

    def heartbeat_job(self, job_id: str, lease: Lease) -> bool:
        return self._heartbeat("jobs", job_id, lease)

    def delete_evaluation(self, evaluation_id: str) -> None:
        ids = [
            r["_id"]
            for r in self._call(
                "list responses",
                lambda: list(self._db.responses.find({"evaluation_id": evaluation_id}, {"_id": 1})),
            )
        ]
        for start in range(0, len(ids), BATCH_SIZE):
            batch = ids[start : start + BATCH_SIZE]
            self._call(
                "delete judgements", partial(self._db.judgements.delete_many, {"response_id": {"$in": batch}})
            )
        for name in ("judgements", "responses", "events", "verdicts", "votes", "jobs"):
            self._call(
                f"delete {name}", partial(self._db[name].delete_many, {"evaluation_id": evaluation_id})
            )
        self._call("delete counter", lambda: self._db.counters.delete_one({"_id": f"events:{evaluation_id}"}))
        self._call("delete evaluation", lambda: self._db.evaluations.delete_one({"_id": evaluation_id}))

    # --- responses ----------------------------------------------------------

    def upsert_response(self, doc: Doc, *, lease: Lease | None = None) -> str:
        task_key = doc.get("task_key")
        if not task_key:
            raise StoreError("a response needs a task_key (evaluation/model/sequence/run/prompt)")
        doc = dict(doc)
        doc.setdefault("created_at", now())
        if lease is not None:
            # Check, then write: without a multi-document transaction a takeover in between can
            # still land this one response, which the unique task_key makes a harmless replace.
            query = self._guarded(str(doc.get("evaluation_id")), None, lease)
            held = self._call("check lease", lambda: self._db.evaluations.count_documents(query, limit=1))
            if not held:
                raise LeaseLost(f"{lease.owner} no longer holds evaluation {doc.get('evaluation_id')}")
        for _ in range(3):  # a racing insert of the same task_key turns the next pass into a replace
            old = self._call(
                "find response", lambda: self._db.responses.find_one({"task_key": task_key}, {"_id": 1})
            )
            if old is not None:
                doc["id"] = old["_id"]
                result = self._call(
                    "replace response",
                    partial(
                        self._db.responses.replace_one,
                        {"_id": old["_id"], "task_key": task_key},
                        to_mongo(doc),
                    ),
                )
                if result.matched_count:
                    return doc["id"]
                continue  # deleted meanwhile: insert instead
            doc["id"] = doc.get("id") or new_id()
            try:
                self._call("insert response", lambda: self._db.responses.insert_one(to_mongo(doc)))
                return doc["id"]
            except DuplicateKeyError:
                doc.pop("id")
        raise StoreError(f"could not upsert response {task_key}: it kept changing under concurrent writers")

    def get_response(self, response_id: str) -> Doc | None:
        found = self._find("responses", {"_id": response_id}, [("_id", 1)], one=True)
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
        query = self._filters(
            evaluation_id=evaluation_id,
            model_name=model_name,
            sequence=sequence,
            run=run,
            prompt_index=prompt_index,
        )
        projection = None if include_messages else {"messages": 0}
        docs = self._find("responses", query, RESPONSE_ORDER, projection=projection)
        if not include_messages:
            for d in docs:
                d.pop("messages", None)
        return docs

    def list_response_stats(self, evaluation_id: str | None = None) -> list[tuple[Any, ...]]:
        fields = RESPONSE_STAT_FIELDS[1:]
        raw = self._rows(
            "responses", self._filters(evaluation_id=evaluation_id), dict.fromkeys(fields, 1), RESPONSE_ORDER
        )
        # Count words only where the writer did not store them: fetch just those texts, in batches.
        for d in raw:
            d["words"] = stored_words(d.get("words"))
        missing = [d["_id"] for d in raw if d["words"] is None]
        counted: dict[str, int] = {}
        for start in range(0, len(missing), BATCH_SIZE):
            batch = missing[start : start + BATCH_SIZE]
            for d in self._rows("responses", {"_id": {"$in": batch}}, {"response": 1}, [("_id", 1)]):
                counted[d["_id"]] = count_words(d.get("response"))
        rows = []
        for d in raw:
            if d["words"] is None:
                d["words"] = counted.get(d["_id"], 0)
            rows.append((d["_id"], *(d.get(f) for f in fields)))
        return rows

    def count_responses(self, evaluation_id: str, *, errors: bool | None = None) -> int:
        query: Doc = {"evaluation_id": evaluation_id}
        if errors is True:
            query["error"] = {"$nin": [None, ""]}
        elif errors is False:
            query["error"] = {"$in": [None, ""]}
        return self._call("count responses", lambda: self._db.responses.count_documents(query))

    def completed_task_keys(self, evaluation_id: str) -> set[str]:
        rows = self._call(
            "list task keys",
            lambda: list(
                self._db.responses.find(
                    {"evaluation_id": evaluation_id, "error": {"$in": [None, ""]}}, {"task_key": 1}
                )
            ),
        )
        return {r["task_key"] for r in rows}

    # --- judgements, verdicts, votes -----------------------------------------

    def _add_unique(self, collection: str, doc: Doc, keys: tuple[str, ...], what: str) -> str:
        missing = [k for k in keys if doc.get(k) is None]
        if missing:
            raise StoreError(f"a {what} needs {', '.join(missing)} (part of its unique key)")
        doc = {**doc, "id": doc.get("id") or new_id()}
        doc.setdefault("created_at", now())
        try:
            self._call(f"add {what}", lambda: self._db[collection].insert_one(to_mongo(doc)))
        except DuplicateKeyError as exc:
            key = ", ".join(f"{k}={doc[k]!r}" for k in keys)
            raise DuplicateError(f"a {what} with {key} already exists") from exc
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
        query = self._filters(evaluation_id=evaluation_id, response_id=response_id, judge_model=judge_model)
        return self._find("judgements", query, [("created_at", 1), ("_id", 1)])

    def list_judgement_scores(
        self, evaluation_id: str | None, criteria: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        projection = dict.fromkeys(JUDGEMENT_SCORE_FIELDS, 1)
        if all(c and "." not in c and not c.startswith("$") for c in criteria):
            projection.update((f"scores.{c}.score", 1) for c in criteria)
        elif criteria:
            projection["scores"] = 1  # a criterion id that is no usable field path: take them whole
        raw = self._rows(
            "judgements",
            self._filters(evaluation_id=evaluation_id),
            projection,
            [("created_at", 1), ("_id", 1)],
        )
        return [
            (*(d.get(f) for f in JUDGEMENT_SCORE_FIELDS), *(projected_score(d, c) for c in criteria))
            for d in raw
        ]

    def add_verdict(self, doc: Doc) -> str:
        return self._add_unique("verdicts", doc, ("verdict_key",), "verdict")

    def list_verdicts(self, evaluation_id: str | None = None, *, judge: str | None = None) -> list[Doc]:
        query = self._filters(evaluation_id=evaluation_id, judge=judge)
        return self._find("verdicts", query, [("created_at", 1), ("_id", 1)])

    def add_vote(self, doc: Doc) -> str:
        return self._add_unique("votes", doc, ("voter", "pair_key"), "vote")

    def list_votes(self, evaluation_id: str | None = None, *, voter: str | None = None) -> list[Doc]:
        query = self._filters(evaluation_id=evaluation_id, voter=voter)
        return self._find("votes", query, [("created_at", 1), ("_id", 1)])

    # --- audit trail --------------------------------------------------------

    def add_audit(self, doc: Doc) -> str:
        doc = {**doc, "id": doc.get("id") or new_id()}
        doc["ts"] = doc.get("ts") or now()
        try:
            self._call("add audit entry", lambda: self._db.audit.insert_one(to_mongo(doc)))
        except DuplicateKeyError as exc:
            raise DuplicateError(f"an audit entry with id {doc['id']} already exists") from exc
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
        query = self._filters(actor=actor, action=action, target=target)
        if since is not None:
            query["ts"] = {"$gte": utc(since)}
        return self._find("audit", query, [("ts", -1), ("_id", -1)], limit)

    # --- events -------------------------------------------------------------

    def _next_seq(self, evaluation_id: str) -> int:
        """Allocate the next event number atomically from a per-evaluation counter document."""
        for _ in range(3):
            try:
                counter = self._call(
                    "allocate event seq",
                    lambda: self._db.counters.find_one_and_update(
                        {"_id": f"events:{evaluation_id}"},
                        {"$inc": {"seq": 1}},
                        upsert=True,
                        return_document=ReturnDocument.AFTER,
                    ),
                )
                if counter is not None:  # an upsert returning the document after: always there
                    return int(counter["seq"])
            except DuplicateKeyError:
                continue  # two first upserts raced; the counter exists now
        raise StoreError(f"could not allocate an event number for evaluation {evaluation_id}")

    def append_event(self, evaluation_id: str, level: str, message: str, **fields: Any) -> int:
        seq = self._next_seq(evaluation_id)
        doc = {
            **clean(fields),
            "_id": f"{evaluation_id}:{seq}",
            "evaluation_id": evaluation_id,
            "seq": seq,
            "ts": fields.get("ts") or now(),
            "level": level,
            "message": redact(message),
        }
        try:
            self._call("append event", lambda: self._db.events.insert_one(doc))
        except DuplicateKeyError:
            pass  # a retried insert whose first try had landed: the event is there
        return seq

    def list_events(self, evaluation_id: str, after_seq: int = 0, limit: int | None = None) -> list[Doc]:
        query = {"evaluation_id": evaluation_id, "seq": {"$gt": after_seq}}
        return self._find("events", query, [("seq", 1)], limit)
