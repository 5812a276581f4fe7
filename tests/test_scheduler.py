"""The execution loop across sequences: every pending conversation of a model in one set of waves.

Fast tests on the scripted fake backend; the slow ones check the reproducibility
contract for cross-sequence waves on the real bundled model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storybench_core import catalog
from storybench_core.access import LOCAL_ADMIN
from storybench_core.backends.base import Completion
from storybench_core.backends.fake import FakeBackend
from storybench_core.config import parse_config
from storybench_core.jobs import enqueue, get_evaluation
from storybench_core.runner import ModelPool, RunHooks, Runner, seed_for
from storybench_core.store.sqlite import SQLiteStore

SEQUENCES = ["film", "literary", "commercial", "thriller", "cross_genre"]


class SpyBackend(FakeBackend):
    """The fake backend, recording each chat_batch call as (sequence prompt, seed) pairs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batches: list[list[tuple[str, int]]] = []

    def chat_batch(self, conversations, settings, on_token=None, on_done=None):  # type: ignore[no-untyped-def]
        self.batches.append(
            [(c[-1]["content"], s.seed) for c, s in zip(conversations, settings, strict=True)]
        )
        return super().chat_batch(conversations, settings, on_token, on_done)


def config_for(sequences: list[str] = SEQUENCES, runs: int = 3, **gen: Any) -> Any:
    return parse_config(
        {
            "models": [{"kind": "fake", "name": "fake-a"}],
            "sequences": sequences,
            "generation": {"runs": runs, "max_tokens": 64, "n_ctx": 2048, **gen},
        }
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "s.db")
    yield s
    s.close()


def run_with(
    store: SQLiteStore, config: Any, backend: Any, hooks: RunHooks | None = None, **runner: Any
) -> Any:
    eid = enqueue(store, config, LOCAL_ADMIN)
    summary = Runner(store, ModelPool(lambda spec, gen: backend), hooks, **runner).execute(
        get_evaluation(store, eid), config
    )
    return eid, summary


def texts(store: SQLiteStore, eid: str) -> dict[tuple[str, int, int], str]:
    return {(d["sequence"], d["run"], d["prompt_index"]): d["response"] for d in store.list_responses(eid)}


def sequence_of(prompt: str) -> str:
    return next(s for s in SEQUENCES if any(p.text == prompt for p in catalog.get_sequence(s).prompts))


def test_every_conversation_of_the_evaluation_in_one_wave_per_turn(store: SQLiteStore) -> None:
    backend = SpyBackend()
    events: list[tuple[str, dict[str, Any]]] = []
    progress: list[dict[str, Any]] = []
    hooks = RunHooks(event=lambda level, msg, **f: events.append((msg, f)), progress=progress.append)
    eid, summary = run_with(store, config_for(), backend, hooks)
    assert summary.completed == 45 and summary.failed == 0
    # 5 sequences × 3 runs = 15 conversations, turn k of all of them in one call.
    assert [len(b) for b in backend.batches] == [15, 15, 15]
    for turn, batch in enumerate(backend.batches):
        assert {sequence_of(prompt) for prompt, _ in batch} == set(SEQUENCES)
        assert sorted(seed for _, seed in batch) == sorted(
            seed_for(42, r, turn) for r in (1, 2, 3) for _ in SEQUENCES
        )
    assert [f for msg, f in events if "batch width" in msg] == [{"batch_width": 15}]
    assert any(
        msg.startswith("generating fake-a, 15 conversations together: film · prompt 1") for msg, _ in events
    )
    assert {d["batch_width"] for d in store.list_responses(eid)} == {15}
    wide = [p for p in progress if p.get("batch_width") == 15 and "batch_sequences" in p]
    assert wide and wide[-1]["batch_sequences"] == SEQUENCES
    # The per-run figures are those of the lead's sequence: run numbers the Run page can tell apart.
    assert all(len(p["run_tokens_per_s"]) == len(p["batch_runs"]) <= 3 for p in wide)


def test_same_texts_whatever_the_width_or_grouping(store: SQLiteStore) -> None:
    one = run_with(store, config_for(parallel_runs=1), SpyBackend())[0]
    every = run_with(store, config_for(), SpyBackend())[0]
    per_sequence_backend = SpyBackend()
    per_sequence = run_with(store, config_for(), per_sequence_backend, group="sequence")[0]
    four = run_with(store, config_for(parallel_runs=4), SpyBackend())[0]
    assert texts(store, one) == texts(store, every) == texts(store, per_sequence) == texts(store, four)
    assert len(texts(store, one)) == 45
    # Per sequence: the three runs of one sequence together, one sequence after another.
    assert [len(b) for b in per_sequence_backend.batches] == [3] * 15
    assert all(len({sequence_of(p) for p, _ in b}) == 1 for b in per_sequence_backend.batches)


def test_parallel_runs_caps_a_pool_that_refills_across_sequences(store: SQLiteStore) -> None:
    backend = SpyBackend()
    run_with(store, config_for(["film", "thriller"], runs=3, parallel_runs=4), backend)
    # Six conversations, four at a time: film 1-3 and thriller 1 first, then thriller 2-3.
    assert [len(b) for b in backend.batches] == [4, 4, 4, 2, 2, 2]
    assert [sequence_of(p) for p, _ in backend.batches[0]] == ["film"] * 3 + ["thriller"]


class FailsThrillerTurnTwo(SpyBackend):
    """An error Completion for every thriller conversation's second turn."""

    def chat_batch(self, conversations, settings, on_token=None, on_done=None):  # type: ignore[no-untyped-def]
        self.batches.append(
            [(c[-1]["content"], s.seed) for c, s in zip(conversations, settings, strict=True)]
        )
        bad = catalog.get_sequence("thriller").prompts[1].text
        out = []
        for i, (conv, s) in enumerate(zip(conversations, settings, strict=True)):
            if conv[-1]["content"] == bad:
                done = Completion("", "error", 0, 0, 0.0, extra={"error": "scripted failure"})
            else:
                done = self.chat(conv, s)
            if on_done:
                on_done(i, done)
            out.append(done)
        return out


def test_a_failing_conversation_leaves_room_for_a_pending_one(store: SQLiteStore) -> None:
    backend = FailsThrillerTurnTwo()
    eid, summary = run_with(store, config_for(["thriller", "film"], runs=2, parallel_runs=2), backend)
    docs = {(d["sequence"], d["run"], d["prompt_index"]): d for d in store.list_responses(eid)}
    assert all("scripted failure" in docs[("thriller", r, 1)]["error"] for r in (1, 2))
    assert all("skipped: turn 2" in docs[("thriller", r, 2)]["error"] for r in (1, 2))
    assert summary.completed == 2 + 6 and summary.failed == 4
    # Both thriller runs broke at turn 2, so the film runs joined at once instead of after a turn 3.
    assert [len(b) for b in backend.batches] == [2, 2, 2, 2, 2]


def test_stop_mid_wave_across_sequences_then_resume(store: SQLiteStore) -> None:
    config = config_for(["film", "thriller"], runs=2)
    eid = enqueue(store, config, LOCAL_ADMIN)
    doc = get_evaluation(store, eid)
    stored = {"n": 0}

    def on_event(level: str, message: str, **_: Any) -> None:
        stored["n"] += message.startswith("stored ")

    first = Runner(
        store,
        ModelPool(lambda s, g: SpyBackend()),
        RunHooks(event=on_event, should_stop=lambda: stored["n"] >= 6),
    ).execute(doc, config)
    assert first.stopped and store.count_responses(eid) == 6  # turn 1 of four, turn 2 of two
    backend = SpyBackend()
    second = Runner(store, ModelPool(lambda s, g: backend)).execute(doc, config)
    assert second.skipped_existing == 6 and second.completed == 6
    assert [len(b) for b in backend.batches] == [4, 2]  # two at turn 3 beside two at turn 2, then two
    again = run_with(store, config_for(["film", "thriller"], runs=2, parallel_runs=1), SpyBackend())[0]
    assert texts(store, eid) == texts(store, again)


# --- the real model (slow) -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_cross_sequence_waves_write_the_width_one_texts(
    bundled_model: Path, tmp_path: Path, temperature: float
) -> None:
    """The reproducibility contract across sequences: three sequences × two runs decoded together
    (one wave of six, and a pool of four that refills) write the texts of one conversation at a time."""
    store = SQLiteStore(tmp_path / "s.db")
    backend = None

    def factory(spec: Any, gen: Any) -> Any:
        nonlocal backend
        if backend is None:
            from storybench_core.backends.llama import create_llama_backend

            backend = create_llama_backend(spec, gen)
        return backend

    def config(parallel_runs: int) -> Any:
        return parse_config(
            {
                "models": [{"kind": "bundled", "options": {"n_threads": 1}}],
                "sequences": ["film", "thriller", "literary"],
                "generation": {
                    "runs": 2,
                    "max_tokens": 12,
                    "n_ctx": 1024,
                    "temperature": temperature,
                    "parallel_runs": parallel_runs,
                },
            }
        )

    try:
        out = {}
        for width in (1, 6, 4):
            eid = enqueue(store, config(width), LOCAL_ADMIN)
            summary = Runner(store, ModelPool(factory)).execute(get_evaluation(store, eid), config(width))
            assert summary.completed == 18 and summary.failed == 0
            out[width] = texts(store, eid)
            widths = {d.get("batch_width") for d in store.list_responses(eid)}
            assert widths == {1: {None}, 6: {6}, 4: {4, 2}}[width]  # four, then the last two
        assert out[1] == out[6] == out[4]
    finally:
        if backend is not None:
            backend.close()
        store.close()
