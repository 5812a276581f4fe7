"""Runner on the scripted fake backend (fast; tests/test_runner_slow.py covers the same path on the real model)."""

from __future__ import annotations

import pytest

from storybench_core import catalog
from storybench_core.access import LOCAL_ADMIN
from storybench_core.backends.fake import FakeBackend
from storybench_core.config import parse_config
from storybench_core.errors import ContextOverflowError, StopRequested
from storybench_core.jobs import enqueue, get_evaluation
from storybench_core.runner import (
    ModelPool,
    RunHooks,
    Runner,
    fit_to_context,
    group_conversations,
    plan_tasks,
    seed_for,
)
from storybench_core.store.sqlite import SQLiteStore


def make_config(**gen):
    return parse_config(
        {
            "models": [
                {"kind": "fake", "name": "fake-a"},
                {"kind": "fake", "name": "fake-b", "options": {"words": 12}},
            ],
            "sequences": ["film", "thriller"],
            "generation": {"runs": 2, "max_tokens": 64, "n_ctx": 2048, **gen},
        }
    )


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "s.db")
    yield s
    s.close()


def test_plan_is_model_sequence_run_prompt():
    config = make_config()
    tasks = plan_tasks(config)
    assert len(tasks) == 2 * 2 * 2 * 3
    assert [(t.model_name, t.sequence, t.run, t.prompt_index) for t in tasks[:4]] == [
        ("fake-a", "film", 1, 0),
        ("fake-a", "film", 1, 1),
        ("fake-a", "film", 1, 2),
        ("fake-a", "film", 2, 0),
    ]
    convs = group_conversations(tasks)
    assert len(convs) == 8 and all(len(c) == 3 for c in convs)
    assert tasks[0].prompt_text == catalog.get_sequence("film").prompts[0].text


def test_seeds_are_one_based_and_distinct():
    assert seed_for(42, 1, 0) == 42
    assert seed_for(42, 2, 0) == 1042
    assert len({seed_for(42, r, p) for r in range(1, 4) for p in range(3)}) == 9


def count(messages):
    return sum(len(m["content"].split()) for m in messages)


def test_fit_drops_oldest_turns_and_never_cuts_the_prompt():
    system = [{"role": "system", "content": "s"}]
    history = [
        ({"role": "user", "content": "a " * 10}, {"role": "assistant", "content": "b " * 10}),
        ({"role": "user", "content": "c " * 10}, {"role": "assistant", "content": "d " * 10}),
    ]
    prompt = {"role": "user", "content": "p " * 5}
    full = fit_to_context(system, history, prompt, count, 100)
    assert full.dropped_turns == 0 and len(full.messages) == 6
    one = fit_to_context(system, history, prompt, count, 30)
    assert one.dropped_turns == 1 and one.messages[1]["content"].startswith("c")
    assert one.messages[-1] == prompt
    with pytest.raises(ContextOverflowError, match="raise generation.n_ctx"):
        fit_to_context(system, history, prompt, count, 5)


def run(store, config, hooks=None, pool=None):
    eid = enqueue(store, config, LOCAL_ADMIN)
    doc = get_evaluation(store, eid)
    summary = Runner(store, pool or ModelPool(), hooks).execute(doc, config)
    return eid, summary


def test_every_response_stored_with_conversation(store):
    config = make_config()
    eid, summary = run(store, config)
    assert summary.completed == 24 and summary.failed == 0
    docs = store.list_responses(eid)
    assert len(docs) == 24
    third = next(
        d
        for d in docs
        if d["model_name"] == "fake-a"
        and d["sequence"] == "film"
        and d["run"] == 2
        and d["prompt_index"] == 2
    )
    first = next(
        d
        for d in docs
        if d["model_name"] == "fake-a"
        and d["sequence"] == "film"
        and d["run"] == 2
        and d["prompt_index"] == 0
    )
    second = next(
        d
        for d in docs
        if d["model_name"] == "fake-a"
        and d["sequence"] == "film"
        and d["run"] == 2
        and d["prompt_index"] == 1
    )
    contents = [m["content"] for m in third["messages"]]
    assert first["response"] in contents and second["response"] in contents
    assert third["messages"][-1]["content"] == third["prompt_text"]
    assert third["seed"] == seed_for(config.generation.seed, 2, 2)
    assert third["completion_tokens"] > 0 and third["tokens_per_s"] > 0
    assert third["task_key"].startswith(eid)


def test_same_config_reproduces_same_text(store):
    config = make_config()
    e1, _ = run(store, config)
    e2, _ = run(store, config)
    t1 = [d["response"] for d in store.list_responses(e1)]
    t2 = [d["response"] for d in store.list_responses(e2)]
    assert t1 == t2
    assert len(set(t1)) > 1


def test_one_model_loaded_at_a_time_and_reused():
    loaded = []

    def factory(spec, gen):
        loaded.append(spec.display_name)
        return FakeBackend()

    pool = ModelPool(factory)
    config = make_config()
    a, fresh = pool.get(config.models[0], config.generation)
    again, fresh2 = pool.get(config.models[0], config.generation)
    assert fresh and not fresh2 and a is again
    pool.get(config.models[1], config.generation)
    assert a.closed and loaded == ["fake-a", "fake-b"]


def test_failure_is_recorded_and_later_turns_skipped(store):
    config = parse_config(
        {
            "models": [
                {"kind": "fake", "options": {"fail_on": catalog.get_sequence("film").prompts[1].text[:30]}}
            ],
            "sequences": ["film"],
            "generation": {"runs": 1, "max_tokens": 32},
        }
    )
    eid, summary = run(store, config)
    docs = store.list_responses(eid)
    assert [bool(d["error"]) for d in docs] == [False, True, True]
    assert "scripted failure" in docs[1]["error"]
    assert "skipped: turn 2" in docs[2]["error"]
    assert summary.failed == 2
    assert store.completed_task_keys(eid) == {docs[0]["task_key"]}


def test_resume_does_only_missing_tasks(store):
    config = make_config()
    eid = enqueue(store, config, LOCAL_ADMIN)
    doc = get_evaluation(store, eid)
    calls = {"n": 0}

    def stop_after_five():
        return calls["n"] >= 5

    def on_event(level, message, **_):
        if message.startswith("stored "):
            calls["n"] += 1

    first = Runner(store, ModelPool(), RunHooks(event=on_event, should_stop=stop_after_five)).execute(
        doc, config
    )
    assert first.stopped and store.count_responses(eid) == 5
    before = store.list_responses(eid)
    backend = FakeBackend()
    pool = ModelPool(lambda spec, gen: backend)
    second = Runner(store, pool).execute(doc, config)
    assert second.skipped_existing == 5 and second.completed == 19
    docs = store.list_responses(eid)
    assert len(docs) == 24 and len({d["task_key"] for d in docs}) == 24
    # The resumed conversations were rebuilt from the store: each answer stored before the stop
    # (none of them a last turn) is in the prompt of its conversation's next turn.
    seen = [m["content"] for call in backend.calls for m in call if m["role"] == "assistant"]
    assert before and all(d["prompt_index"] < 2 and d["response"] in seen for d in before)


def test_stop_mid_generation_stores_nothing_partial(store):
    config = parse_config(
        {
            "models": [{"kind": "fake", "options": {"words": 200, "delay_s": 0.01}}],
            "sequences": ["film"],
            "generation": {"runs": 1},
        }
    )
    state = {"tokens": 0}

    def progress(fields):
        state["tokens"] += 1

    hooks = RunHooks(progress=progress, should_stop=lambda: state["tokens"] >= 3)
    eid, summary = run(store, config, hooks)
    assert summary.stopped
    assert store.count_responses(eid) == 0


def test_stop_requested_propagates_from_backend(store):
    class Stopper(FakeBackend):
        def chat(self, messages, settings, on_token=None):
            raise StopRequested()

    config = parse_config({"models": [{"kind": "fake"}], "sequences": ["film"], "generation": {"runs": 1}})
    eid, summary = run(store, config, pool=ModelPool(lambda s, g: Stopper()))
    assert summary.stopped and store.count_responses(eid) == 0


def test_context_overflow_recorded_per_task(store):
    config = parse_config(
        {
            "models": [{"kind": "fake", "options": {"n_ctx": 60}}],
            "sequences": ["film"],
            "generation": {"runs": 1, "max_tokens": 40, "n_ctx": 256},
        }
    )
    eid, _ = run(store, config)
    docs = store.list_responses(eid)
    assert docs[0]["error"] and "n_ctx" in docs[0]["error"]


def test_stop_during_a_model_load_stops_the_evaluation_without_failures(tmp_path):
    """A load that takes long (a download) asks the evaluation's stop check through stopping.py."""
    from storybench_core import stopping
    from storybench_core.backends.fake import FakeBackend
    from storybench_core.runner import ModelPool, RunHooks, Runner

    store = SQLiteStore(tmp_path / "s.db")
    config = parse_config(
        {"models": [{"kind": "fake"}], "sequences": ["film"], "generation": {"max_tokens": 32}}
    )
    eid = store.create_evaluation({"name": "x", "config": {}})
    stop_asked = {"n": 0}

    def should_stop() -> bool:
        stop_asked["n"] += 1
        return stop_asked["n"] > 1  # not before the load starts, but during it

    def slow_load(spec, gen):
        for _ in range(1000):  # a download's progress callbacks
            stopping.raise_if_stopped()
        return FakeBackend()

    summary = Runner(store, ModelPool(slow_load), RunHooks(should_stop=should_stop)).execute(
        {"id": eid}, config
    )
    assert summary.stopped and summary.failed == 0 and store.list_responses(eid) == []
    store.close()
