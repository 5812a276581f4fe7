"""Typed records: every document both stores return validates against its record (records.py).

The documents are made by the real producers (a worker running an evaluation of fake models, the
rubric judge, pairwise judging, a vote, an archive) on each store of the contract suite (SQLite and
the MongoDB wire protocol, tests/store/conftest.py), then read back through every read of the Store.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, get_args

import pytest
from pydantic import ValidationError
from store.conftest import nx_server, store_opener  # noqa: F401 (the contract suite's fixtures)

from storybench_core import archive, job_kinds, jobs, judge, pairwise, records, votes
from storybench_core.access import LOCAL_ADMIN
from storybench_core.config import ModelSpec, parse_config
from storybench_core.records import (
    AuditRecord,
    EvaluationRecord,
    EvaluationStatus,
    JobKind,
    JudgementRecord,
    ResponseRecord,
    VerdictRecord,
)
from storybench_core.store.base import ACTIVE_STATUSES, EVALUATION_STATUSES, JOB_KINDS, Store
from storybench_core.store.schema import DOCUMENT_FIELDS

StoreOpener = Callable[[], Store]


def _produce_every_kind(store: Store) -> str:
    """An evaluation with responses (one failed), events, judgements, verdicts, a vote and audit entries."""
    config = parse_config(
        {
            "name": "records",
            "models": [
                {"kind": "fake", "name": "writer-a", "options": {"words": 12}},
                # The film sequence's last prompt asks for a scene: writer-b fails it.
                {"kind": "fake", "name": "writer-b", "options": {"words": 6, "fail_on": "scene"}},
            ],
            "sequences": ["film"],
            "generation": {"runs": 1, "max_tokens": 64},
            "judge": {"model": {"kind": "fake", "name": "rubric-judge"}},
        }
    )
    eid = jobs.enqueue(store, config, LOCAL_ADMIN)
    assert jobs.Worker(store).run_once()
    judge.judge_evaluation(store, eid)
    job_kinds.enqueue_job(store, "judge", eid, LOCAL_ADMIN)  # finds everything judged already
    assert jobs.Worker(store).run_once()
    pair_judge = ModelSpec(kind="fake", name="pair-judge")  # answers any JSON schema it is given
    pairwise.compare_judge_evaluation(store, eid, pair_judge, budget=4, n_boot=10)
    pair = votes.next_pair_for(store, eid, "ada")
    assert pair is not None
    votes.record_vote(store, LOCAL_ADMIN, pair, "tie", "both fine", typed_name="ada")
    archive.archive_evaluation(store, eid, LOCAL_ADMIN)
    return eid


@pytest.fixture
def store(store_opener: StoreOpener) -> Store:  # noqa: F811 (the contract suite's, on every backend)
    return store_opener()


def test_every_stored_document_validates_against_its_record(store: Store) -> None:
    eid = _produce_every_kind(store)
    read: dict[str, list[dict[str, Any]]] = {
        "evaluations": [
            store.get_evaluation(eid),
            store.get_evaluation(eid, brief=True),
            *store.list_evaluations(),
            *store.list_evaluations(brief=True),
        ],
        "responses": [
            *store.list_responses(eid),
            *store.list_responses(eid, include_messages=False),
            *[store.get_response(r["id"]) for r in store.list_responses(eid)],
        ],
        "judgements": store.list_judgements(eid),
        "events": store.list_events(eid),
        "jobs": [*store.list_jobs(), *[store.get_job(j["id"]) for j in store.list_jobs()]],
        "verdicts": store.list_verdicts(eid),
        "votes": store.list_votes(eid),
        "audit": store.list_audit(),
    }
    assert set(read) == set(records.RECORDS) == set(DOCUMENT_FIELDS)
    for collection, docs in read.items():
        assert docs, f"the producers stored no {collection}"
        record = records.RECORDS[collection]
        for doc in docs:
            assert doc is not None
            record.model_validate(doc)  # raises, naming every bad field
            # The documented columns are all fields of the record (not only passed through as extra).
            missing = set(DOCUMENT_FIELDS[collection]) - set(record.model_fields)
            assert missing == set(), f"{record.__name__} lacks {sorted(missing)}"
    # What the producers made covers the interesting shapes.
    responses = [records.validate_document("responses", d) for d in read["responses"]]
    assert any(r.error for r in responses) and any(not r.error for r in responses)
    assert {records.validate_document("audit", d).action for d in read["audit"]} >= {
        "queue",
        "vote",
        "archive",
    }
    evaluation = EvaluationRecord.model_validate(read["evaluations"][0])
    assert evaluation.status == "failed" and evaluation.archived_at is not None  # one task failed
    verdict = VerdictRecord.model_validate(read["verdicts"][0])
    assert verdict.judge_model == verdict.judge == "pair-judge"


def test_the_status_tuples_are_the_literal_types() -> None:
    assert get_args(EvaluationStatus) == EVALUATION_STATUSES
    assert get_args(JobKind) == JOB_KINDS
    assert EVALUATION_STATUSES == ("queued", "running", "stopping", "stopped", "completed", "failed")
    assert set(ACTIVE_STATUSES) < set(EVALUATION_STATUSES)


NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("record", "doc", "bad_field"),
    [
        (EvaluationRecord, {"id": "e", "status": "done", "created_at": NOW}, "status"),
        (
            EvaluationRecord,
            {"id": "e", "status": "queued", "created_at": NOW.replace(tzinfo=None)},
            "created_at",
        ),
        (
            EvaluationRecord,
            {"id": "e", "status": "queued", "created_at": NOW, "total_tasks": "4"},
            "total_tasks",
        ),
        (
            JudgementRecord,
            {
                "id": "j",
                "response_id": "r",
                "judge_model": "j",
                "rubric_hash": "h",
                "attempt": 1,
                "created_at": NOW,
                "scores": {"voice": {"score": "5", "justification": "ok"}},
            },
            "scores.voice.score",
        ),
        (AuditRecord, {"id": "a", "ts": NOW, "actor": "ann", "action": "launch"}, "action"),
        (
            ResponseRecord,
            {
                "id": "r",
                "evaluation_id": "e",
                "task_key": "k",
                "model_name": "m",
                "sequence": "s",
                "run": 0,
                "prompt_index": 0,
                "created_at": NOW,
            },
            "run",
        ),
    ],
)
def test_a_record_names_the_bad_field(
    record: type[records.Record], doc: dict[str, Any], bad_field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        record.model_validate(doc)
    assert {".".join(map(str, e["loc"])) for e in info.value.errors()} == {bad_field}


def test_unknown_fields_are_kept() -> None:
    got = EvaluationRecord.model_validate({"id": "e", "status": "queued", "created_at": NOW, "kind": "judge"})
    assert got.model_dump()["kind"] == "judge"
