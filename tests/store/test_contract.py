"""The Store contract, run against every backend (see conftest.store_opener)."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from storybench_core.errors import DuplicateError, LeaseLost, StoreError
from storybench_core.store.base import JUDGEMENT_SCORE_FIELDS, RESPONSE_STAT_FIELDS, Lease, Store

StoreOpener = Callable[[], Store]  # the store_opener fixture (conftest.py)

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def evaluation(n: int = 0, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": f"eval {n}",
        "config": {"models": [{"name": "m"}], "generation": {"temperature": 0.7}},
        "config_hash": f"hash{n}",
        "status": "queued",
        "created_at": T0 + timedelta(minutes=n),
        "total_tasks": 4,
        "completed_tasks": 0,
        "failed_tasks": 0,
    }
    doc.update(fields)
    return doc


def response(
    evaluation_id: str, model: str = "m", sequence: str = "s", run: int = 1, prompt: int = 0, **fields: Any
):
    doc: dict[str, Any] = {
        "evaluation_id": evaluation_id,
        "task_key": f"{evaluation_id}/{model}/{sequence}/{run}/{prompt}",
        "model_name": model,
        "model_ref": {"repo_id": "org/repo", "filename": "model.gguf", "subdirectory": None},
        "sequence": sequence,
        "run": run,
        "prompt_index": prompt,
        "prompt_name": f"p{prompt}",
        "prompt_text": "Write a story.",
        "messages": [{"role": "user", "content": "Write a story."}],
        "response": f"Once upon a time ({model} {sequence} {run} {prompt})",
        "finish_reason": "stop",
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "generation_time_s": 1.5,
        "tokens_per_s": 22.6,
        "seed": 7,
        "created_at": T0,
        "error": None,
    }
    doc.update(fields)
    return doc


def judgement(response_id: str, evaluation_id: str, attempt: int = 1, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "response_id": response_id,
        "evaluation_id": evaluation_id,
        "judge_model": "judge",
        "rubric_hash": "r1",
        "attempt": attempt,
        "scores": {
            "voice": {"score": 7, "justification": "lively"},
            "plot": {"score": 5, "justification": "thin"},
        },
        "overall": 6.0,
        "raw_output": '{"voice": 7}',
        "created_at": T0 + timedelta(seconds=attempt),
        "error": None,
    }
    doc.update(fields)
    return doc


# --- identity ---------------------------------------------------------------


def test_implements_protocol_and_describes_itself(store: Store) -> None:
    assert isinstance(store, Store)
    store.ping()
    text = store.describe()
    assert text.startswith(("sqlite:", "mongodb"))


# --- evaluations ------------------------------------------------------------


def test_create_and_get_evaluation_round_trips(store: Store) -> None:
    eid = store.create_evaluation(evaluation(1))
    assert isinstance(eid, str) and len(eid) >= 16
    got = store.get_evaluation(eid)
    assert got is not None
    assert got["id"] == eid
    assert got["name"] == "eval 1"
    assert got["config"] == {"models": [{"name": "m"}], "generation": {"temperature": 0.7}}
    assert got["status"] == "queued"
    assert got["created_at"] == T0 + timedelta(minutes=1)
    assert got["total_tasks"] == 4
    # Every documented field is present, None when never set.
    for field in ("started_at", "finished_at", "worker_id", "heartbeat_at", "error"):
        assert field in got and got[field] is None


def test_create_evaluation_keeps_a_given_id_and_refuses_a_duplicate(store: Store) -> None:
    assert store.create_evaluation(evaluation(id="fixed-id")) == "fixed-id"
    with pytest.raises(StoreError, match="fixed-id"):
        store.create_evaluation(evaluation(id="fixed-id"))
    assert store.get_evaluation("missing") is None


def test_list_evaluations_newest_first_with_filters(store: Store) -> None:
    ids = [
        store.create_evaluation(evaluation(n, status=s))
        for n, s in enumerate(["queued", "running", "completed"])
    ]
    assert [e["id"] for e in store.list_evaluations()] == ids[::-1]
    assert [e["id"] for e in store.list_evaluations(limit=2)] == [ids[2], ids[1]]
    assert [e["id"] for e in store.list_evaluations(statuses=["queued", "completed"])] == [ids[2], ids[0]]
    assert store.list_evaluations(statuses=["failed"]) == []
    assert store.list_evaluations(statuses=[]) == []


def test_update_evaluation_sets_only_given_fields(store: Store) -> None:
    eid = store.create_evaluation(evaluation())
    store.update_evaluation(eid, {"completed_tasks": 3, "error": "boom", "config": {"x": 1}, "note": "extra"})
    got = store.get_evaluation(eid)
    assert got is not None
    assert (got["completed_tasks"], got["error"], got["config"], got["note"]) == (
        3,
        "boom",
        {"x": 1},
        "extra",
    )
    assert got["name"] == "eval 0" and got["total_tasks"] == 4
    store.update_evaluation(eid, {"error": None})
    assert store.get_evaluation(eid)["error"] is None  # type: ignore[index]
    with pytest.raises(StoreError, match="not found"):
        store.update_evaluation("missing", {"status": "failed"})


def test_transition_evaluation_is_compare_and_set(store: Store) -> None:
    eid = store.create_evaluation(evaluation(status="running"))
    assert store.transition_evaluation(eid, ["queued"], {"status": "stopped"}) is False
    assert store.get_evaluation(eid)["status"] == "running"  # type: ignore[index]
    assert store.transition_evaluation(eid, ["queued", "running"], {"status": "stopping", "error": "asked"})
    got = store.get_evaluation(eid)
    assert got is not None and (got["status"], got["error"]) == ("stopping", "asked")
    assert store.transition_evaluation("missing", ["running"], {"status": "stopped"}) is False


def test_claim_takes_the_oldest_queued_and_marks_it_running(store: Store) -> None:
    started = T0 - timedelta(days=1)
    newer = store.create_evaluation(evaluation(5))
    older = store.create_evaluation(evaluation(2, started_at=started))  # a requeued job
    store.create_evaluation(evaluation(0, status="running"))
    before = store.clock()
    first = store.claim_next_evaluation("w1")
    assert first is not None and first["id"] == older
    assert (first["status"], first["worker_id"], first["lease"]) == ("running", "w1", 1)
    assert before - timedelta(seconds=5) <= first["heartbeat_at"] <= store.clock() + timedelta(seconds=5)
    assert first["started_at"] == started  # kept: only set when unset
    second = store.claim_next_evaluation("w2")
    assert second is not None and second["id"] == newer and second["started_at"] == second["heartbeat_at"]
    assert store.get_evaluation(newer)["worker_id"] == "w2"  # type: ignore[index]
    assert store.claim_next_evaluation("w3") is None


def test_claim_of_one_evaluation_by_id(store: Store) -> None:
    queued = store.create_evaluation(evaluation(1))
    other = store.create_evaluation(evaluation(0))
    assert store.claim_next_evaluation("w", evaluation_id="missing") is None
    got = store.claim_next_evaluation("w", evaluation_id=queued)
    assert got is not None and got["id"] == queued and got["status"] == "running"
    assert store.claim_next_evaluation("w2", evaluation_id=queued) is None  # not queued any more
    assert store.get_evaluation(other)["status"] == "queued"  # type: ignore[index]


def test_every_claim_is_a_new_lease_and_old_leases_write_nothing(store: Store) -> None:
    eid = store.create_evaluation(evaluation(0))
    first = store.claim_next_evaluation("w1")
    assert first is not None
    old = Lease.of(first)
    assert store.heartbeat(eid, old)
    assert store.update_evaluation(eid, {"progress": {"tasks_done": 1}}, lease=old)
    # The job is requeued (its worker looked dead) and claimed again: the same owner name, a new epoch.
    assert store.transition_evaluation(eid, ["running"], {"status": "queued", "worker_id": None}, lease=old)
    second = store.claim_next_evaluation("w1")
    assert second is not None and second["lease"] == old.epoch + 1
    new = Lease.of(second)
    assert not store.heartbeat(eid, old)
    assert not store.update_evaluation(eid, {"progress": {"tasks_done": 99}}, lease=old)
    assert not store.transition_evaluation(eid, ["running"], {"status": "completed"}, lease=old)
    with pytest.raises(LeaseLost):
        store.upsert_response(response(eid, 0), lease=old)
    assert store.count_responses(eid) == 0
    got = store.get_evaluation(eid)
    assert got is not None and got["status"] == "running" and got["progress"] == {"tasks_done": 1}
    assert store.heartbeat(eid, new) and store.update_evaluation(
        eid, {"progress": {"tasks_done": 2}}, lease=new
    )
    assert store.upsert_response(response(eid, 0), lease=new)
    assert store.transition_evaluation(eid, ["running"], {"status": "completed"}, lease=new)
    assert not store.heartbeat(eid, new)  # finished: nothing to beat for


def test_brief_evaluations_leave_out_the_config_and_nothing_else(store: Store) -> None:
    eid = store.create_evaluation(evaluation(0, config={"big": "x" * 10_000}, queued_by="ann"))
    full = store.get_evaluation(eid)
    brief = store.get_evaluation(eid, brief=True)
    assert full is not None and brief is not None and "config" in full and "config" not in brief
    assert brief == {k: v for k, v in full.items() if k != "config"}
    listed = store.list_evaluations(brief=True)
    assert [d["id"] for d in listed] == [eid] and "config" not in listed[0]
    assert listed[0]["queued_by"] == "ann"


def test_field_updates_touch_only_their_fields(store: Store) -> None:
    eid = store.create_evaluation(evaluation(0, config={"keep": [1, 2]}, note="n", progress={"a": 1}))
    assert store.update_evaluation(eid, {"progress": {"b": 2}, "completed_tasks": 3, "new_field": None})
    got = store.get_evaluation(eid)
    assert got is not None
    assert (got["config"], got["note"], got["progress"], got["completed_tasks"]) == (
        {"keep": [1, 2]},
        "n",
        {"b": 2},
        3,
    )
    assert "new_field" in got and got["new_field"] is None
    with pytest.raises(StoreError, match="not found"):
        store.update_evaluation("missing", {"progress": {}})


def test_claim_never_hands_one_evaluation_to_two_workers(store_opener: StoreOpener) -> None:
    first = store_opener()
    ids = {first.create_evaluation(evaluation(n)) for n in range(12)}
    handles = [store_opener() for _ in range(4)]  # one handle per worker, as separate processes would have
    claims: dict[str, list[str]] = {f"w{i}": [] for i in range(4)}
    barrier = threading.Barrier(4)
    failures: list[BaseException] = []

    def work(worker: str, handle: Store) -> None:
        try:
            barrier.wait()
            while (doc := handle.claim_next_evaluation(worker)) is not None:
                claims[worker].append(doc["id"])
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(w, h)) for w, h in zip(claims, handles, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures
    claimed = [i for got in claims.values() for i in got]
    assert sorted(claimed) == sorted(ids)  # each exactly once
    for worker, got in claims.items():
        for eid in got:
            assert first.get_evaluation(eid)["worker_id"] == worker  # type: ignore[index]


def test_delete_evaluation_removes_everything_attached(store: Store) -> None:
    keep = store.create_evaluation(evaluation(1))
    gone = store.create_evaluation(evaluation(2))
    for eid in (keep, gone):
        rid = store.upsert_response(response(eid))
        store.add_judgement(judgement(rid, eid))
        store.append_event(eid, "info", "started")
        store.add_verdict({"evaluation_id": eid, "verdict_key": f"{eid}:v", "judge": "j", "winner": "a"})
        store.add_vote({"evaluation_id": eid, "voter": "ann", "pair_key": f"{eid}:p", "winner": "b"})
    store.delete_evaluation(gone)
    assert store.get_evaluation(gone) is None
    assert store.list_responses(gone) == [] and store.count_responses(gone) == 0
    assert store.list_judgements(gone) == [] and store.list_events(gone) == []
    assert store.list_verdicts(gone) == [] and store.list_votes(gone) == []
    assert store.get_evaluation(keep) is not None
    assert len(store.list_responses(keep)) == len(store.list_judgements(keep)) == 1
    assert len(store.list_events(keep)) == len(store.list_verdicts(keep)) == len(store.list_votes(keep)) == 1
    assert len(store.list_judgements()) == 1 and len(store.list_votes(voter="ann")) == 1


# --- responses --------------------------------------------------------------


def test_upsert_replaces_by_task_key_and_keeps_the_id(store: Store) -> None:
    eid = store.create_evaluation(evaluation())
    rid = store.upsert_response(response(eid, error="timeout", response=None, partial=True))
    again = response(eid, id="another-id", response="The end.")
    assert store.upsert_response(again) == rid
    assert store.count_responses(eid) == 1
    got = store.get_response(rid)
    assert got is not None and got["id"] == rid
    assert (got["response"], got["error"]) == ("The end.", None)
    assert "partial" not in got  # a replace, not a merge
    assert store.get_response("another-id") is None
    with pytest.raises(StoreError, match="task_key"):
        store.upsert_response({"evaluation_id": eid, "response": "x"})


def test_get_response_round_trips_nested_fields(store: Store) -> None:
    eid = store.create_evaluation(evaluation())
    doc = response(eid)
    rid = store.upsert_response(doc)
    got = store.get_response(rid)
    assert got is not None
    for field, value in doc.items():
        assert got[field] == value, field
    assert got["evaluation_id"] == eid
    assert store.get_response("missing") is None


def test_list_responses_filters_and_orders(store: Store) -> None:
    eid = store.create_evaluation(evaluation(1))
    other = store.create_evaluation(evaluation(2))
    keys = [(m, s, r, p) for m in ("a", "b") for s in ("s1", "s2") for r in (1, 2) for p in (0, 1, 2)]
    shuffled = keys[:]
    random.Random(3).shuffle(shuffled)
    for m, s, r, p in shuffled:
        store.upsert_response(response(eid, m, s, r, p))
    store.upsert_response(response(other, "a", "s1", 1, 0))
    got = store.list_responses(eid)
    assert [(d["model_name"], d["sequence"], d["run"], d["prompt_index"]) for d in got] == keys
    assert len(store.list_responses()) == len(keys) + 1
    assert len(store.list_responses(eid, model_name="b")) == 12
    assert len(store.list_responses(eid, sequence="s2", run=1)) == 6
    only = store.list_responses(eid, model_name="a", sequence="s1", run=2, prompt_index=1)
    assert [d["task_key"] for d in only] == [f"{eid}/a/s1/2/1"]
    assert len(store.list_responses(model_name="a", sequence="s1", run=1, prompt_index=0)) == 2
    assert store.list_responses(eid, model_name="zzz") == []


def test_list_responses_can_leave_out_messages(store: Store) -> None:
    eid = store.create_evaluation(evaluation())
    store.upsert_response(response(eid, note="kept"))
    (full,) = store.list_responses(eid)
    (light,) = store.list_responses(eid, include_messages=False)
    assert full["messages"] == [{"role": "user", "content": "Write a story."}]
    assert "messages" not in light
    assert light["response"] == full["response"] and light["note"] == "kept" and light["id"] == full["id"]


def test_counts_and_completed_task_keys_split_on_error(store: Store) -> None:
    eid = store.create_evaluation(evaluation())
    store.upsert_response(response(eid, prompt=0))
    store.upsert_response(response(eid, prompt=1, error=""))  # empty error counts as success
    store.upsert_response(response(eid, prompt=2, error="context overflow"))
    r3 = response(eid, prompt=3)
    del r3["error"]  # absent error counts as success
    store.upsert_response(r3)
    assert store.count_responses(eid) == 4
    assert store.count_responses(eid, errors=True) == 1
    assert store.count_responses(eid, errors=False) == 3
    assert store.completed_task_keys(eid) == {f"{eid}/m/s/1/{p}" for p in (0, 1, 3)}
    assert store.count_responses("missing") == 0 and store.completed_task_keys("missing") == set()


# --- judgements -------------------------------------------------------------


def test_judgements_are_unique_per_attempt_and_filterable(store: Store) -> None:
    eid = store.create_evaluation(evaluation())
    r1 = store.upsert_response(response(eid, prompt=0))
    r2 = store.upsert_response(response(eid, prompt=1))
    j1 = store.add_judgement(judgement(r1, eid, 1))
    with pytest.raises(StoreError, match="already exists"):
        store.add_judgement(judgement(r1, eid, 1, overall=1.0))
    store.add_judgement(judgement(r1, eid, 2, overall=float("nan"), error="invalid JSON"))
    store.add_judgement(judgement(r1, eid, 1, rubric_hash="r2"))
    store.add_judgement(judgement(r2, eid, 1, judge_model="other"))
    got = store.list_judgements(eid)
    assert len(got) == 4
    first = next(j for j in got if j["id"] == j1)
    assert first["scores"]["voice"] == {"score": 7, "justification": "lively"}
    assert first["overall"] == 6.0 and first["created_at"] == T0 + timedelta(seconds=1)
    failed = store.list_judgements(response_id=r1, judge_model="judge")
    assert sorted((j["attempt"], j["rubric_hash"]) for j in failed) == [(1, "r1"), (1, "r2"), (2, "r1")]
    assert next(j for j in failed if j["attempt"] == 2)["overall"] is None  # NaN reads back as None
    assert [j["response_id"] for j in store.list_judgements(judge_model="other")] == [r2]
    with pytest.raises(StoreError, match="attempt"):
        store.add_judgement({"response_id": r1, "judge_model": "judge", "rubric_hash": "r1"})


# --- flat projections for the results views ---------------------------------


def _expected_stats(doc: dict[str, Any]) -> tuple[Any, ...]:
    """What list_response_stats must give for a list_responses document."""
    words = doc.get("words")
    words = int(words) if words is not None else len((doc.get("response") or "").split())
    return (doc["id"], *(doc.get(f) for f in RESPONSE_STAT_FIELDS[1:-2]), words, doc.get("error"))


def _expected_scores(doc: dict[str, Any], criteria: list[str]) -> tuple[Any, ...]:
    """What list_judgement_scores must give for a list_judgements document."""
    scores = doc.get("scores") or {}
    return (
        *(doc.get(f) for f in JUDGEMENT_SCORE_FIELDS),
        *((scores.get(c) or {}).get("score") for c in criteria),
    )


def test_flat_projection_fields_are_the_ones_results_reads() -> None:
    from storybench_core import results

    assert results.RESPONSE_STAT_FIELDS == RESPONSE_STAT_FIELDS
    assert results.JUDGEMENT_SCORE_FIELDS == JUDGEMENT_SCORE_FIELDS


def test_response_stats_equal_list_responses(store: Store) -> None:
    eid = store.create_evaluation(evaluation(1))
    other = store.create_evaluation(evaluation(2))
    keys = [(m, p) for m in ("b", "a") for p in (2, 0, 1)]
    for m, p in keys:
        store.upsert_response(response(eid, m, prompt=p, response=" ".join(["word"] * (p + 3)) + "\n end"))
    store.upsert_response(response(eid, "c", prompt=0, words=41))  # the writer's own count wins
    store.upsert_response(response(eid, "c", prompt=1, error="context overflow", response=None))
    store.upsert_response(response(eid, "c", prompt=2, tokens_per_s=float("nan"), finish_reason=None))
    partial = response(eid, "c", prompt=3)
    for field in ("prompt_name", "completion_tokens", "error", "response"):
        del partial[field]
    store.upsert_response(partial)
    store.upsert_response(response(other, "a", prompt=0, response="one two"))
    # A replace recounts: the stats follow the newest text.
    store.upsert_response(response(other, "a", prompt=0, response="one two three four"))
    for wanted in (eid, other, None):
        got = store.list_response_stats(wanted)
        assert all(type(row) is tuple and len(row) == len(RESPONSE_STAT_FIELDS) for row in got)
        docs = store.list_responses(wanted, include_messages=False)
        assert got == [_expected_stats(d) for d in docs]
    assert [row[-2] for row in store.list_response_stats(other)] == [4]
    assert store.list_response_stats("missing") == []


def test_judgement_scores_equal_list_judgements(store: Store) -> None:
    eid = store.create_evaluation(evaluation(1))
    other = store.create_evaluation(evaluation(2))
    r1 = store.upsert_response(response(eid, prompt=0))
    r2 = store.upsert_response(response(eid, prompt=1))
    r3 = store.upsert_response(response(other, prompt=0))
    store.add_judgement(judgement(r1, eid, 2, retries=1, structured_output="json_schema"))
    store.add_judgement(judgement(r1, eid, 1, overall=float("nan"), scores=None, error="invalid JSON"))
    only_plot = {"plot": {"score": 3, "justification": "ok"}, "ünï key": {"score": 2}}
    store.add_judgement(judgement(r2, eid, 1, judge_model="other", scores=only_plot, overall=3.0))
    store.add_judgement(judgement(r3, other, 1, rubric_hash="r2", retries=0, structured_output="prompt-only"))
    criteria = ["voice", "plot", "pace"]
    for wanted in (eid, other, None):
        got = store.list_judgement_scores(wanted, criteria)
        assert all(type(row) is tuple for row in got)
        assert got == [_expected_scores(j, criteria) for j in store.list_judgements(wanted)]
    rows = store.list_judgement_scores(eid, ["plot", "voice"])
    assert [(row[2], row[-2:]) for row in rows if row[1] == "judge"] == [(1, (None, None)), (2, (5, 7))]
    assert store.list_judgement_scores(eid, []) == [
        _expected_scores(j, []) for j in store.list_judgements(eid)
    ]
    # Criterion ids that are no plain JSON path or field path still read back.
    odd = ["ünï key", 'quo"te', "dotted.id", "$dollar"]
    got = store.list_judgement_scores(eid, odd)
    assert got == [_expected_scores(j, odd) for j in store.list_judgements(eid)]
    assert [row[-4:] for row in got if row[1] == "other"] == [(2, None, None, None)]
    assert store.list_judgement_scores("missing", criteria) == []


# --- events -----------------------------------------------------------------


def test_events_are_numbered_per_evaluation_and_replayable(store: Store) -> None:
    a = store.create_evaluation(evaluation(1))
    b = store.create_evaluation(evaluation(2))
    assert [store.append_event(a, "info", f"line {i}", done=i, total=3) for i in range(1, 4)] == [1, 2, 3]
    assert store.append_event(b, "warning", "other") == 1
    events = store.list_events(a)
    assert [(e["seq"], e["message"], e["done"], e["total"]) for e in events] == [
        (1, "line 1", 1, 3),
        (2, "line 2", 2, 3),
        (3, "line 3", 3, 3),
    ]
    assert all(e["evaluation_id"] == a and e["level"] == "info" for e in events)
    assert all(e["ts"].utcoffset() == timedelta(0) for e in events)
    assert [e["seq"] for e in store.list_events(a, after_seq=1)] == [2, 3]
    assert [e["seq"] for e in store.list_events(a, after_seq=0, limit=2)] == [1, 2]
    assert store.list_events(a, after_seq=3) == []
    stamp = T0 + timedelta(seconds=9)
    store.append_event(b, "info", "stamped", ts=stamp)
    assert store.list_events(b, after_seq=1)[0]["ts"] == stamp


def test_concurrent_event_appends_get_distinct_contiguous_numbers(store_opener: StoreOpener) -> None:
    first = store_opener()
    eid = first.create_evaluation(evaluation())
    handles = [first, store_opener(), store_opener()]
    seqs: list[int] = []
    lock = threading.Lock()

    def work(handle: Store, worker: int) -> None:
        for i in range(10):
            seq = handle.append_event(eid, "info", f"{worker}:{i}")
            with lock:
                seqs.append(seq)

    threads = [threading.Thread(target=work, args=(h, n)) for n, h in enumerate(handles)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(seqs) == list(range(1, 31))
    assert [e["seq"] for e in first.list_events(eid)] == list(range(1, 31))


# --- verdicts and votes -----------------------------------------------------


def test_verdicts_unique_on_key_and_filterable(store: Store) -> None:
    eid = store.create_evaluation(evaluation())
    store.add_verdict(
        {"evaluation_id": eid, "verdict_key": "k1", "judge": "j1", "winner": "a", "pair_key": "p"}
    )
    with pytest.raises(StoreError, match="k1"):
        store.add_verdict({"evaluation_id": eid, "verdict_key": "k1", "judge": "j2", "winner": "b"})
    store.add_verdict({"evaluation_id": eid, "verdict_key": "k2", "judge": "j2", "winner": "tie"})
    assert [v["verdict_key"] for v in store.list_verdicts(eid, judge="j2")] == ["k2"]
    assert {v["winner"] for v in store.list_verdicts(eid)} == {"a", "tie"}
    assert store.list_verdicts("missing") == []


def test_votes_unique_per_voter_and_pair(store: Store) -> None:
    eid = store.create_evaluation(evaluation())
    vid = store.add_vote({"evaluation_id": eid, "voter": "ann", "pair_key": "p1", "winner": "a"})
    with pytest.raises(StoreError, match="ann"):
        store.add_vote({"evaluation_id": eid, "voter": "ann", "pair_key": "p1", "winner": "b"})
    store.add_vote({"evaluation_id": eid, "voter": "ann", "pair_key": "p2", "winner": "b"})
    store.add_vote({"evaluation_id": eid, "voter": "bob", "pair_key": "p1", "winner": "b"})
    assert len(store.list_votes(eid)) == 3
    anns = store.list_votes(voter="ann")
    assert {v["pair_key"] for v in anns} == {"p1", "p2"}
    assert next(v for v in anns if v["id"] == vid)["winner"] == "a"


# --- unique keys ------------------------------------------------------------


def test_every_unique_key_violation_raises_duplicate_error(store: Store) -> None:
    """Callers that write idempotently catch DuplicateError, never the message text."""
    assert issubclass(DuplicateError, StoreError)
    eid = store.create_evaluation(evaluation(id="dup-eval"))
    rid = store.upsert_response(response(eid))
    store.add_judgement(judgement(rid, eid, 1))
    store.add_verdict({"evaluation_id": eid, "verdict_key": "k", "judge": "j", "pair_key": "p"})
    store.add_vote({"evaluation_id": eid, "voter": "ann", "pair_key": "p"})
    audit_id = store.add_audit({"actor": "ann", "action": "queue", "target": eid})
    store.create_job({"id": "dup-job", "kind": "judge", "evaluation_id": eid})
    repeats: dict[str, Callable[[], object]] = {
        "evaluation": lambda: store.create_evaluation(evaluation(id="dup-eval")),
        "job": lambda: store.create_job({"id": "dup-job", "kind": "pairwise", "evaluation_id": eid}),
        "judgement": lambda: store.add_judgement(judgement(rid, eid, 1, overall=1.0)),
        "verdict": lambda: store.add_verdict({"evaluation_id": eid, "verdict_key": "k", "judge": "j2"}),
        "vote": lambda: store.add_vote({"evaluation_id": eid, "voter": "ann", "pair_key": "p"}),
        "audit entry": lambda: store.add_audit({"id": audit_id, "actor": "bob", "action": "stop"}),
    }
    for what, repeat in repeats.items():
        with pytest.raises(DuplicateError, match=what):
            repeat()
    # The first write of each is what stays.
    assert len(store.list_judgements(eid)) == 1 and store.list_judgements(eid)[0]["overall"] == 6.0
    assert [v["judge"] for v in store.list_verdicts(eid)] == ["j"]
    assert len(store.list_votes(eid)) == 1
    assert [e["actor"] for e in store.list_audit()] == ["ann"]
    assert [j["kind"] for j in store.list_jobs(evaluation_id=eid)] == ["judge"]
    # A missing part of a unique key is a plain StoreError, not a duplicate.
    with pytest.raises(StoreError) as info:
        store.add_vote({"evaluation_id": eid, "pair_key": "p"})
    assert not isinstance(info.value, DuplicateError)


# --- datetimes and extra fields ---------------------------------------------


def test_datetimes_come_back_aware_utc_with_millisecond_precision(store: Store) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2026, 5, 4, 14, 30, 15, 123456, tzinfo=plus_two)
    naive = datetime(2026, 5, 4, 9, 0, 0)
    eid = store.create_evaluation(evaluation(created_at=local, heartbeat_at=naive, seen={"at": local}))
    got = store.get_evaluation(eid)
    assert got is not None
    expected = datetime(2026, 5, 4, 12, 30, 15, 123000, tzinfo=UTC)
    assert got["created_at"] == expected and got["created_at"].utcoffset() == timedelta(0)
    assert got["heartbeat_at"] == naive.replace(tzinfo=UTC)  # naive is taken as UTC
    assert got["seen"]["at"] == expected and got["seen"]["at"].tzinfo is not None
    default = store.get_evaluation(store.create_evaluation({"name": "no date"}))
    assert default is not None and default["created_at"].tzinfo is not None
    assert abs(default["created_at"] - datetime.now(UTC)) < timedelta(minutes=1)


def test_unknown_fields_round_trip(store: Store) -> None:
    extra = {"tags": ["a", "b"], "meta": {"depth": {"n": 1.5}}, "flag": True, "empty": None}
    eid = store.create_evaluation(evaluation(**extra))
    got = store.get_evaluation(eid)
    assert got is not None and {k: got[k] for k in extra} == extra
    rid = store.upsert_response(response(eid, hardware={"gpu": "H100"}, cached_tokens=5))
    got_r = store.get_response(rid)
    assert got_r is not None and (got_r["hardware"], got_r["cached_tokens"]) == ({"gpu": "H100"}, 5)
    jid = store.add_judgement(judgement(rid, eid, reasoning="because"))
    assert [j["reasoning"] for j in store.list_judgements(response_id=rid) if j["id"] == jid] == ["because"]


def test_writes_are_visible_to_another_handle(store_opener: StoreOpener) -> None:
    a, b = store_opener(), store_opener()
    eid = a.create_evaluation(evaluation())
    a.upsert_response(response(eid))
    b.update_evaluation(eid, {"status": "running"})
    assert a.get_evaluation(eid)["status"] == "running"  # type: ignore[index]
    assert b.count_responses(eid) == 1
    assert not math.isnan(b.list_responses(eid)[0]["tokens_per_s"])


# --- audit trail ------------------------------------------------------------


def audit_entry(n: int, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "ts": T0 + timedelta(minutes=n),
        "actor": "ann@example.com",
        "actor_name": "Ann",
        "role": "operator",
        "source": "oidc",
        "action": "queue",
        "target": f"eval-{n}",
        "details": {"tasks": n, "config": {"name": "q"}},
    }
    doc.update(fields)
    return doc


def test_audit_round_trips_newest_first(store: Store) -> None:
    ids = [store.add_audit(audit_entry(n)) for n in range(3)]
    assert all(isinstance(i, str) and i for i in ids)
    got = store.list_audit()
    assert [e["id"] for e in got] == ids[::-1]
    first = got[-1]
    assert first["ts"] == T0 and first["ts"].tzinfo is not None
    assert (first["actor"], first["actor_name"], first["role"], first["source"]) == (
        "ann@example.com", "Ann", "operator", "oidc",
    )  # fmt: skip
    assert (first["action"], first["target"]) == ("queue", "eval-0")
    assert first["details"] == {"tasks": 0, "config": {"name": "q"}}
    assert [e["id"] for e in store.list_audit(limit=2)] == [ids[2], ids[1]]
    stamped = store.list_audit(actor="x")  # nothing yet
    assert stamped == []
    now_id = store.add_audit({"actor": "x", "action": "vote", "target": None})
    entry = store.list_audit(actor="x")[0]
    assert entry["id"] == now_id and abs(entry["ts"] - datetime.now(UTC)) < timedelta(minutes=1)
    assert entry["details"] is None and entry["role"] is None  # every field present


def test_audit_filters_by_actor_action_target_and_since(store: Store) -> None:
    store.add_audit(audit_entry(0))
    store.add_audit(audit_entry(1, action="stop"))
    store.add_audit(audit_entry(2, actor="bo@example.com", action="stop"))
    store.add_audit(audit_entry(3, actor="cli:root", action="delete", target="eval-0"))
    assert [e["target"] for e in store.list_audit(action="stop")] == ["eval-2", "eval-1"]
    assert [e["action"] for e in store.list_audit(actor="ann@example.com")] == ["stop", "queue"]
    both = store.list_audit(actor="bo@example.com", action="stop")
    assert [e["target"] for e in both] == ["eval-2"]
    assert [e["action"] for e in store.list_audit(target="eval-0")] == ["delete", "queue"]
    since = store.list_audit(since=T0 + timedelta(minutes=2))
    assert [e["target"] for e in since] == ["eval-0", "eval-2"]  # inclusive, newest first
    local_since = (T0 + timedelta(minutes=3)).astimezone(timezone(timedelta(hours=-5)))
    assert [e["actor"] for e in store.list_audit(since=local_since)] == ["cli:root"]
    assert store.list_audit(action="stop", since=T0 + timedelta(minutes=3)) == []


def test_audit_survives_deleting_its_evaluation(store: Store) -> None:
    eid = store.create_evaluation(evaluation())
    store.add_audit(audit_entry(0, target=eid, action="delete"))
    store.delete_evaluation(eid)
    assert [e["target"] for e in store.list_audit()] == [eid]


def test_archived_at_is_a_documented_evaluation_field(store: Store) -> None:
    eid = store.create_evaluation(evaluation())
    got = store.get_evaluation(eid)
    assert got is not None and "archived_at" in got and got["archived_at"] is None
    store.update_evaluation(eid, {"archived_at": T0})
    assert store.get_evaluation(eid)["archived_at"] == T0  # type: ignore[index]
    assert [e["archived_at"] for e in store.list_evaluations()] == [T0]
    store.update_evaluation(eid, {"archived_at": None})
    assert store.get_evaluation(eid)["archived_at"] is None  # type: ignore[index]


def test_a_fresh_store_has_skipped_no_rows(store: Store) -> None:
    store.create_evaluation({"name": "fine"})
    assert len(store.list_evaluations()) == 1
    assert store.unreadable_rows() == []
