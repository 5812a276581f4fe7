"""The batched path of the runner (fake backend) and the API backend's chat_batch (loopback server).

Fast: no model, no network. tests/backends/test_llama_batch.py covers the
llama.cpp batch decoder on the real bundled model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from storybench_core import catalog
from storybench_core.access import LOCAL_ADMIN
from storybench_core.backends.base import Completion, GenerationSettings, Message
from storybench_core.backends.fake import FakeBackend
from storybench_core.backends.openai_compat import OpenAIBackend, RetryPolicy
from storybench_core.config import GenerationSettingsConfig, ModelSpec, parse_config
from storybench_core.errors import StopRequested
from storybench_core.fitting import MIB, estimate_kv_cache_bytes
from storybench_core.gguf_info import read_gguf_info
from storybench_core.jobs import enqueue, get_evaluation
from storybench_core.runner import ModelPool, RunHooks, Runner, seed_for
from storybench_core.store.sqlite import SQLiteStore
from storybench_core.widths import choose_width
from tests.backends.openai_servers import Reply, ScriptedOpenAIServer, allow_endpoint
from tests.fixtures_gguf import write_tiny_gguf


class SpyBackend(FakeBackend):
    """The fake backend, recording each chat_batch call (its conversations and seeds) and counting
    the pieces it streamed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batches: list[list[tuple[list[Message], int]]] = []
        self.streamed = 0

    def chat_batch(self, conversations, settings, on_token=None, on_done=None):  # type: ignore[no-untyped-def]
        self.batches.append([(list(c), s.seed) for c, s in zip(conversations, settings, strict=True)])

        def counted(i: int, piece: str) -> None:
            self.streamed += 1
            on_token(i, piece)

        return super().chat_batch(conversations, settings, counted if on_token else None, on_done)


def config_for(runs: int = 3, **gen: Any) -> Any:
    return parse_config(
        {
            "models": [{"kind": "fake", "name": "fake-a"}],
            "sequences": ["film"],
            "generation": {"runs": runs, "max_tokens": 64, "n_ctx": 2048, **gen},
        }
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "s.db")
    yield s
    s.close()


def run_with(store: SQLiteStore, config: Any, backend: Any, hooks: RunHooks | None = None) -> tuple[str, Any]:
    eid = enqueue(store, config, LOCAL_ADMIN)
    summary = Runner(store, ModelPool(lambda spec, gen: backend), hooks).execute(
        get_evaluation(store, eid), config
    )
    return eid, summary


# --- the runner's batched path -----------------------------------------------------------


def test_runs_of_a_sequence_are_generated_together_turn_by_turn(store: SQLiteStore) -> None:
    backend = SpyBackend()
    events: list[tuple[str, str, dict[str, Any]]] = []
    progress: list[dict[str, Any]] = []
    hooks = RunHooks(event=lambda level, msg, **f: events.append((level, msg, f)), progress=progress.append)
    eid, summary = run_with(store, config_for(runs=3), backend, hooks)

    assert summary.completed == 9 and summary.failed == 0
    # One call per turn, three runs in each, each run with its own seed.
    assert [len(b) for b in backend.batches] == [3, 3, 3]
    for turn, batch in enumerate(backend.batches):
        assert [seed for _, seed in batch] == [seed_for(42, run, turn) for run in (1, 2, 3)]
    # Each run's later turn carries that run's own earlier answers.
    docs = {(d["run"], d["prompt_index"]): d for d in store.list_responses(eid)}
    for run in (1, 2, 3):
        turn3 = backend.batches[2][run - 1][0]
        assert [m["content"] for m in turn3 if m["role"] == "assistant"] == [
            docs[(run, 0)]["response"],
            docs[(run, 1)]["response"],
        ]
        assert docs[(run, 2)]["batch_width"] == 3
    width_events = [f for _, msg, f in events if "batch width" in msg]
    assert width_events == [{"batch_width": 3}]
    assert any(p.get("batch_width") == 3 and "run_tokens_per_s" in p for p in progress)


def test_same_texts_as_the_sequential_path(store: SQLiteStore) -> None:
    sequential, batched = SpyBackend(), SpyBackend()
    eid_seq, _ = run_with(store, config_for(runs=3, parallel_runs=1), sequential)
    eid_batch, _ = run_with(store, config_for(runs=3), batched)
    assert not sequential.batches and batched.batches

    def texts(eid: str) -> dict[tuple[int, int], str]:
        return {(d["run"], d["prompt_index"]): d["response"] for d in store.list_responses(eid)}

    assert texts(eid_seq) == texts(eid_batch)


def test_parallel_runs_caps_the_width(store: SQLiteStore) -> None:
    backend = SpyBackend()
    run_with(store, config_for(runs=5, parallel_runs=2), backend)
    # Runs 1-2, 3-4, then 5: each chunk turn by turn.
    assert [len(b) for b in backend.batches] == [2, 2, 2, 2, 2, 2, 1, 1, 1]


def test_parallel_runs_one_is_the_sequential_path(store: SQLiteStore) -> None:
    backend = SpyBackend()
    _, summary = run_with(store, config_for(runs=3, parallel_runs=1), backend)
    assert summary.completed == 9 and backend.batches == []


def test_resume_batches_only_the_missing_runs(store: SQLiteStore) -> None:
    config = config_for(runs=3)
    eid = enqueue(store, config, LOCAL_ADMIN)
    doc = get_evaluation(store, eid)
    stored = {"n": 0}

    def on_event(level: str, message: str, **_: Any) -> None:
        if message.startswith("stored "):
            stored["n"] += 1

    # Stop after four responses: turn 1 of every run and turn 2 of run 1.
    first = Runner(
        store,
        ModelPool(lambda s, g: SpyBackend()),
        RunHooks(event=on_event, should_stop=lambda: stored["n"] >= 4),
    ).execute(doc, config)
    assert first.stopped and store.count_responses(eid) == 4
    keys_before = {d["task_key"]: d["response"] for d in store.list_responses(eid)}

    backend = SpyBackend()
    second = Runner(store, ModelPool(lambda s, g: backend)).execute(doc, config)
    assert second.skipped_existing == 4 and second.completed == 5
    # Each conversation goes on from where it stopped: run 1's turn 3 beside turn 2 of runs 2 and 3,
    # then turn 3 of runs 2 and 3.
    assert [len(b) for b in backend.batches] == [3, 2]
    assert [seed for _, seed in backend.batches[0]] == [
        seed_for(42, 1, 2),
        seed_for(42, 2, 1),
        seed_for(42, 3, 1),
    ]
    assert [seed for _, seed in backend.batches[1]] == [seed_for(42, 2, 2), seed_for(42, 3, 2)]
    # Run 1 was rebuilt from the store: its stored turns are in its third-turn prompt.
    run1_turn3 = backend.batches[0][0][0]
    answers = [m["content"] for m in run1_turn3 if m["role"] == "assistant"]
    assert answers == [
        keys_before[k] for k in sorted(keys_before) if k.endswith("|1|0") or k.endswith("|1|1")
    ]
    docs = store.list_responses(eid)
    assert len(docs) == 9 and len({d["task_key"] for d in docs}) == 9
    assert all(keys_before[d["task_key"]] == d["response"] for d in docs if d["task_key"] in keys_before)


def test_stop_mid_batch_stores_finished_runs_only(store: SQLiteStore) -> None:
    backend = SpyBackend(words=60, delay_s=0.01)
    calls = {"n": 0}
    streamed_at_stop: list[int] = []

    def should_stop() -> bool:
        calls["n"] += 1
        if calls["n"] > 3 and not streamed_at_stop:
            streamed_at_stop.append(backend.streamed)
        return calls["n"] > 3  # true at the first check inside the first batch

    eid, summary = run_with(store, config_for(runs=3), backend, RunHooks(should_stop=should_stop))
    assert summary.stopped
    # Stopped at the first check that said so: not one piece streamed after it, the first batch unfinished.
    assert streamed_at_stop == [backend.streamed]
    assert 0 < backend.streamed < 3 * 60 and len(backend.batches) == 1
    docs = store.list_responses(eid)
    assert len(docs) < 3 and all(not d["error"] and d["response"] for d in docs)


def test_context_is_fitted_per_run(store: SQLiteStore) -> None:
    # Run 2 writes long answers: its later turns drop old turns to fit n_ctx; runs 1 and 3 keep theirs.
    def reply(messages: Sequence[Message], settings: GenerationSettings) -> str:
        run = (settings.seed - 42) // 1000 + 1
        return " ".join(["word"] * (400 if run == 2 else 5))

    backend = SpyBackend(reply=reply, n_ctx=1024)
    config = config_for(runs=3, n_ctx=1024, max_tokens=500)
    eid, summary = run_with(store, config, backend)
    docs = {(d["run"], d["prompt_index"]): d for d in store.list_responses(eid)}
    assert summary.completed == 9 and summary.failed == 0
    assert docs[(2, 2)]["dropped_turns"] >= 1
    assert all(docs[(r, p)]["dropped_turns"] == 0 for r in (1, 3) for p in range(3))


class OneRunFails(SpyBackend):
    """chat_batch reports an error Completion for run 2's second turn."""

    def chat_batch(self, conversations, settings, on_token=None, on_done=None):  # type: ignore[no-untyped-def]
        self.batches.append([(list(c), s.seed) for c, s in zip(conversations, settings, strict=True)])
        out = []
        for i, (conv, s) in enumerate(zip(conversations, settings, strict=True)):
            if s.seed == seed_for(42, 2, 1):
                done = Completion("", "error", 0, 0, 0.0, extra={"error": "scripted per-run failure"})
            else:
                done = self.chat(conv, s)
            if on_done:
                on_done(i, done)
            out.append(done)
        return out


def test_a_failed_run_is_recorded_and_its_later_turns_skipped(store: SQLiteStore) -> None:
    backend = OneRunFails()
    eid, summary = run_with(store, config_for(runs=3), backend)
    docs = {(d["run"], d["prompt_index"]): d for d in store.list_responses(eid)}
    assert docs[(2, 1)]["error"] == "scripted per-run failure"
    assert "skipped" in docs[(2, 2)]["error"]
    assert [len(b) for b in backend.batches] == [3, 3, 2]
    assert summary.completed == 7 and summary.failed == 2


def test_a_whole_batch_failing_fails_its_unfinished_runs(store: SQLiteStore) -> None:
    second_prompt = catalog.get_sequence("film").prompts[1].text[:30]
    backend = SpyBackend(fail_on=second_prompt)
    eid, summary = run_with(store, config_for(runs=2), backend)
    docs = {(d["run"], d["prompt_index"]): d for d in store.list_responses(eid)}
    assert "scripted failure" in docs[(1, 1)]["error"] and "scripted failure" in docs[(2, 1)]["error"]
    assert "skipped" in docs[(1, 2)]["error"]
    assert summary.completed == 2 and summary.failed == 4


# --- the width chooser ---------------------------------------------------------------------


class _FakeLocal(FakeBackend):
    """A fake that looks like a loaded GGUF (model_path, no GPU plan)."""

    def __init__(self, model_path: Path, n_ctx: int) -> None:
        super().__init__(n_ctx=n_ctx)
        self.model_path = model_path
        self.gpu_plan = None


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    return path


def _snapshot(monkeypatch: pytest.MonkeyPatch, ram_available: int) -> None:
    from storybench_core import hardware

    snap = hardware.HardwareSnapshot(ram_total_bytes=ram_available * 2, ram_available_bytes=ram_available)
    monkeypatch.setattr(hardware, "hardware_snapshot", lambda cpu_sample_s=0.1: snap)


def test_width_from_memory_small_and_large(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = read_gguf_info(tiny_model)
    n_ctx = 4096
    per_seq = estimate_kv_cache_bytes(info, n_ctx)
    gen = GenerationSettingsConfig(n_ctx=n_ctx)
    backend = _FakeLocal(tiny_model, n_ctx)

    _snapshot(monkeypatch, 1 * MIB)  # nothing fits: one at a time, and the reason says why
    width, reason = choose_width(backend, gen, 8)
    assert width == 1 and "KV cache" in reason

    _snapshot(monkeypatch, 64 * 1024 * MIB)  # plenty: bounded by the runs to do
    width, reason = choose_width(backend, gen, 8)
    assert width == 8 and "8 conversations to generate" in reason

    # Room for exactly three: 80 % of free RAM minus weights and the compute reserve.
    free = int((info.tensor_bytes_total + 300 * MIB + 3 * per_seq + per_seq // 2) / 0.8)
    _snapshot(monkeypatch, free)
    assert choose_width(backend, gen, 8)[0] == 3
    assert choose_width(backend, GenerationSettingsConfig(n_ctx=n_ctx, parallel_runs=2), 8)[0] == 2


def test_width_for_other_backends() -> None:
    gen = GenerationSettingsConfig()
    assert choose_width(FakeBackend(), GenerationSettingsConfig(parallel_runs=1), 3)[0] == 1
    assert choose_width(FakeBackend(), gen, 1)[0] == 1
    assert choose_width(FakeBackend(), gen, 5)[0] == 5
    assert choose_width(FakeBackend(), GenerationSettingsConfig(parallel_runs=4), 3)[0] == 3

    class Sequential(FakeBackend):
        supports_batch = False

    width, reason = choose_width(Sequential(), gen, 3)
    assert width == 1 and "cannot" in reason


# --- the API backend: runs sent concurrently ----------------------------------------------------

FAST_RETRY = RetryPolicy(max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05)


@pytest.fixture(autouse=True)
def _no_user_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as s:
        allow_endpoint(monkeypatch, s.base_url)
        yield s


def api_backend(
    server: ScriptedOpenAIServer, sleep: Callable[[float], None] = time.sleep, **fields: Any
) -> OpenAIBackend:
    # Each server has its own port, so the process-wide per-endpoint limits start fresh.
    spec = ModelSpec(kind="api", name="api", base_url=server.base_url, api_model="story-model", **fields)
    return OpenAIBackend(spec, retry=FAST_RETRY, sleep=sleep)


CONVERSATION: list[Message] = [{"role": "user", "content": "Write a story."}]


def test_api_batch_respects_the_concurrency_limit(server: ScriptedOpenAIServer) -> None:
    server.enqueue(*[Reply.stream(("a", "b", "c"), delay_s=0.05) for _ in range(5)])
    backend = api_backend(server, max_concurrency=2)
    order: list[int] = []
    texts = backend.chat_batch(
        [CONVERSATION] * 5,
        [GenerationSettings(seed=i) for i in range(5)],
        on_done=lambda i, c: order.append(i),
    )
    assert [t.text for t in texts] == ["abc"] * 5
    assert server.max_in_flight == 2
    assert sorted(order) == [0, 1, 2, 3, 4]
    assert sorted(r.body["seed"] for r in server.chat_requests()) == [0, 1, 2, 3, 4]


def test_api_batch_sends_runs_concurrently(server: ScriptedOpenAIServer) -> None:
    # Each stream starts only once all three requests are open: run one after another, they could not
    # (the server then gives up waiting after 10 s, and max_in_flight says 1).
    server.enqueue(*[Reply.stream(("x",) * 4, until_in_flight=3) for _ in range(3)])
    backend = api_backend(server, max_concurrency=8)
    out = backend.chat_batch([CONVERSATION] * 3, [GenerationSettings(seed=i) for i in range(3)])
    assert [c.text for c in out] == ["xxxx"] * 3
    assert server.max_in_flight == 3


def test_api_batch_honours_retry_after_and_isolates_failures(server: ScriptedOpenAIServer) -> None:
    waits: list[float] = []
    server.enqueue(
        Reply.error(429, "slow down", headers={"Retry-After": "0.2"}),
        Reply.stream(("ok",)),
    )
    backend = api_backend(server, sleep=lambda s: (waits.append(s), time.sleep(s))[1], max_concurrency=1)
    out = backend.chat_batch([CONVERSATION], [GenerationSettings()])
    assert out[0].text == "ok" and waits == [0.2] and out[0].extra["attempts"] == 2

    server.enqueue(Reply.stream(("fine",)), Reply.error(400, "bad request"), Reply.stream(("fine",)))
    out = backend.chat_batch([CONVERSATION] * 3, [GenerationSettings(seed=i) for i in range(3)])
    assert [c.finish_reason for c in out].count("error") == 1
    failed = next(c for c in out if c.finish_reason == "error")
    assert "bad request" in failed.extra["error"]
    assert [c.text for c in out if c.finish_reason != "error"] == ["fine", "fine"]


def test_api_batch_stop_closes_every_stream(server: ScriptedOpenAIServer) -> None:
    server.enqueue(*[Reply.stream(("w",) * 200, delay_s=0.02) for _ in range(3)])
    backend = api_backend(server, max_concurrency=4)
    seen: list[int] = []

    def on_token(i: int, piece: str) -> None:
        seen.append(i)
        if len(seen) >= 6:
            raise StopRequested()

    with pytest.raises(StopRequested):
        backend.chat_batch([CONVERSATION] * 3, [GenerationSettings()] * 3, on_token=on_token)
    assert server.streams_finished == 0  # returned without reading any stream to its end
    # Every open stream was closed: a connection left open would take all 200 small pieces, but the
    # server's writes failed and no stream reached its last event.
    assert server.wait_idle()
    assert server.streams_finished == 0 and server.disconnects >= 1


@pytest.mark.parametrize("runs", [1, 2])  # the sequential path and the batched one
def test_a_silent_endpoint_honours_stop_during_an_evaluation(
    server: ScriptedOpenAIServer, store: SQLiteStore, runs: int
) -> None:
    server.enqueue(*[Reply.hang(30.0) for _ in range(runs)])
    config = parse_config(
        {
            "models": [
                {"kind": "api", "name": "api", "base_url": server.base_url, "api_model": "m", "timeout_s": 60}
            ],
            "sequences": ["film"],
            "generation": {"runs": runs, "max_tokens": 32},
        }
    )
    writes: list[dict[str, Any]] = []
    # Stop once the endpoint holds every request unanswered: only a heartbeat while waiting can see it.
    # Were it not honoured, the server would hang up after 30 s and the run would store a failure.
    hooks = RunHooks(progress=writes.append, should_stop=lambda: server.in_flight >= runs)
    eid = enqueue(store, config, LOCAL_ADMIN)
    summary = Runner(store, ModelPool(), hooks).execute(get_evaluation(store, eid), config)
    assert summary.stopped
    assert len(server.chat_requests()) == runs  # stopped while waiting, not retried
    assert store.count_responses(eid) == 0
    # Heartbeats are no text: no progress write carried any.
    assert all(not w.get("partial_text") for w in writes)


def test_live_progress_keeps_only_the_end_of_a_long_text() -> None:
    from storybench_core.runner import LIVE_TEXT_CHARS, live_text

    assert live_text(["short"]) == "short"
    long = live_text(["x" * 10_000, "THE END"])
    assert len(long) == LIVE_TEXT_CHARS and long.startswith("…") and long.endswith("THE END")
