"""Two real built-in models together (slow): Gemma 3 270M (base, plain transcript) and SmolLM2 135M
Instruct (ChatML chat template from its GGUF), both through llama.cpp on CPU.

They cover what one model cannot: a GGUF chat template end to end, a leaderboard and pairwise
verdicts between two real models, a judge that is a different local model than the candidate
(the deferred auto-judge), and the worker switching models. Every test keeps one run, 16–24
new tokens and one thread per model; the judging tests use a two-prompt sequence and a
two-criterion rubric (catalog overrides in the test's STORYBENCH_HOME), so the file takes about
a minute or two on 2 idle cores.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from importlib import resources
from typing import Any

import pytest

from storybench_core import catalog, jobs, judge, pairwise, paths, results
from storybench_core.access import LOCAL_ADMIN
from storybench_core.backends import llama
from storybench_core.backends.base import ModelBackend
from storybench_core.backends.llama import format_prompt
from storybench_core.backends.registry import create_backend
from storybench_core.bundled import SMOLLM2_135M
from storybench_core.config import GenerationSettingsConfig, ModelSpec, parse_config
from storybench_core.gguf_info import read_gguf_info
from storybench_core.runner import ModelPool
from storybench_core.store.sqlite import SQLiteStore

pytestmark = pytest.mark.slow

ONE_THREAD = {"n_threads": 1}
GEMMA = {"kind": "bundled", "options": ONE_THREAD}
SMOLLM2 = {"kind": "bundled", "builtin": SMOLLM2_135M.id, "options": ONE_THREAD}
GEMMA_NAME, SMOLLM2_NAME = "gemma-3-270m-q4_k_m (bundled)", "smollm2-135m-instruct-q4_1 (bundled)"
# A local judge's context is generation.n_ctx; with the two-criterion rubric a judge prompt is ~600 tokens.
JUDGE_N_CTX = 2048
JUDGE = {"max_tokens": 96, "max_retries": 0}


def small_config(
    models: list[dict[str, Any]],
    max_tokens: int = 24,
    n_ctx: int = 1024,
    sequence: str = "film",
    **extra: Any,
) -> Any:
    """One run of one sequence per model (the 3-prompt `film` by default), a short answer each."""
    generation = {"runs": 1, "max_tokens": max_tokens, "n_ctx": n_ctx, "temperature": 0.7}
    return parse_config({"models": models, "sequences": [sequence], "generation": generation, **extra})


class RecordingFactory:
    """create_backend, recording each backend it made and which were closed (to see the switches)."""

    def __init__(self) -> None:
        self.made: list[ModelBackend] = []
        self.log: list[str] = []

    def __call__(self, spec: ModelSpec, gen: GenerationSettingsConfig) -> ModelBackend:
        backend = create_backend(spec, gen)
        self.made.append(backend)
        self.log.append(f"load {backend.name}")
        close: Callable[[], None] = backend.close

        def closing() -> None:
            self.log.append(f"close {backend.name}")
            close()

        backend.close = closing  # type: ignore[method-assign]
        return backend


def assert_no_score(judgement: dict[str, Any]) -> None:
    """A failed judgement: a reason, no scores, no overall (never a default score)."""
    assert judgement["error"] and not judgement["scores"], judgement
    assert judgement["overall"] is None or math.isnan(judgement["overall"]), judgement


@pytest.fixture
def tiny_sequence(storybench_home) -> str:
    """A two-prompt user sequence (a catalog override): half the judge calls of a packaged one."""
    folder = paths.catalog_override_dir() / "sequences"
    folder.mkdir(parents=True, exist_ok=True)
    sequence = {
        "id": "tiny",
        "title": "Two short briefs",
        "genre": "Short fiction",
        "description": "A story opening, then its next scene.",
        "prompts": [
            {"name": "opening", "text": "Write the opening paragraph of a story set in a lighthouse."},
            {"name": "next", "text": "Continue that story with the next short scene, keeping its names."},
        ],
    }
    (folder / "tiny.json").write_text(json.dumps(sequence))
    return "tiny"


@pytest.fixture
def small_rubric(storybench_home) -> list[str]:
    """The packaged rubric cut to its first two criteria (a catalog override): a quarter of the judge prompt.

    The full seven-criterion rubric on a real model is test_judge_slow.py's; here judging is the plumbing.
    """
    packaged = json.loads((resources.files("storybench_core.catalog") / "data" / "rubric.json").read_text())
    packaged["criteria"] = packaged["criteria"][:2]
    paths.catalog_override_dir().mkdir(parents=True, exist_ok=True)
    (paths.catalog_override_dir() / "rubric.json").write_text(json.dumps(packaged))
    return [c["id"] for c in packaged["criteria"]]


@pytest.fixture
def store(storybench_home):
    opened = SQLiteStore(storybench_home / "storybench.db")
    yield opened
    opened.close()


def test_smollm2_writes_through_its_gguf_chatml_template(smollm2_model, store, monkeypatch):
    """The chat-template path: the prompt sent is ChatML, and the response records which template made it."""
    template_text = read_gguf_info(smollm2_model).chat_template
    assert template_text and "<|im_start|>" in template_text
    formatted: list[str] = []  # every prompt text the backend tokenized during the run

    def recording_format_prompt(messages: Any, template: Any) -> str:
        formatted.append(format_prompt(messages, template))
        return formatted[-1]

    monkeypatch.setattr(llama, "format_prompt", recording_format_prompt)
    factory = RecordingFactory()
    pool = ModelPool(factory)
    try:
        eid = jobs.enqueue(store, small_config([SMOLLM2]), LOCAL_ADMIN)
        assert jobs.Worker(store, pool=pool).run_once()
        [backend] = factory.made
        responses = sorted(store.list_responses(eid), key=lambda r: r["prompt_index"])
        assert [r["error"] for r in responses] == [None, None, None]
        expected = f"gguf:llama:{hashlib.sha256(template_text.encode('utf-8')).hexdigest()[:12]}"
        for r in responses:
            assert r["model_name"] == SMOLLM2_NAME and r["model_ref"]["builtin"] == SMOLLM2_135M.id
            assert r["template"] == expected == backend.template.name  # not "plain-transcript"
            assert r["response"].strip() and r["finish_reason"] in ("stop", "length")
            # What llama.cpp was given: these messages in the GGUF's ChatML, its tokens counted exactly.
            prompt = format_prompt(r["messages"], backend.template)
            assert prompt in formatted
            assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
            assert prompt.count("<|im_start|>user\n") == r["prompt_index"] + 1
            assert prompt.count("<|im_start|>assistant\n") == r["prompt_index"] + 1
            assert "### Instruction:" not in prompt
            assert r["prompt_tokens"] == backend.count_tokens(r["messages"])
        assert formatted and all(text.startswith("<|im_start|>system\n") for text in formatted)
        # The template's <|im_start|> / <|im_end|> are read as control tokens, not as text.
        assert backend.template.parse_special
    finally:
        pool.release()


def test_two_models_get_two_leaderboard_rows_and_pairwise_verdicts(
    bundled_model, smollm2_model, tiny_sequence, small_rubric, store
):
    """A two-model evaluation, judged by rubric and compared pairwise by a real local judge.

    The judge is Gemma: SmolLM2 (Q4_1, 30 layers of full attention) evaluates a long prompt 2-5x
    slower than Gemma on these CPUs (llama.cpp alone, one thread); the next test has SmolLM2 judge.
    """
    config = small_config(
        [GEMMA, SMOLLM2],
        n_ctx=JUDGE_N_CTX,
        sequence=tiny_sequence,
        judge={"model": GEMMA, **JUDGE},
    )
    pool = ModelPool()
    try:
        eid = jobs.enqueue(store, config, LOCAL_ADMIN)
        assert jobs.Worker(store, pool=pool).run_once()
        assert store.count_responses(eid, errors=False) == 4

        summary = judge.judge_evaluation(store, eid, pool=pool)
        assert summary.judged + summary.failed == 4
        rubric = catalog.load_rubric()
        assert list(rubric.criterion_ids) == small_rubric
        for j in store.list_judgements(eid):
            if j["error"] is None:  # a valid judgement: every criterion in range
                assert set(j["scores"]) == set(small_rubric)
                assert all(rubric.scale_min <= v["score"] <= rubric.scale_max for v in j["scores"].values())
            else:  # a failure is kept as one, with its reason, and no score
                assert_no_score(j)
        board = results.leaderboard(results.responses_frame(store, eid), n_boot=100)
        assert sorted(board["model_name"]) == sorted([GEMMA_NAME, SMOLLM2_NAME])
        assert (board["n_scored"] + board["n_failed_judgements"] == 2).all()
        assert board["n_scored"].sum() == summary.judged

        compared = pairwise.compare_judge_evaluation(
            store, eid, ModelSpec(**GEMMA), pool, budget=4, n_boot=100
        )
        verdicts = store.list_verdicts(compared.scope, judge=GEMMA_NAME)
        assert len(verdicts) == 4  # 2 prompts × both orders
        assert {(v["model_a"], v["model_b"]) for v in verdicts} == {
            (GEMMA_NAME, SMOLLM2_NAME),
            (SMOLLM2_NAME, GEMMA_NAME),
        }
        for v in verdicts:
            if v["error"] is None:
                labels, _reason = pairwise.parse_verdict(v["raw_output"], pairwise.DEFAULT_GROUPS)
                assert labels == v["groups"] and set(labels.values()) <= set(pairwise.LABELS)
        assert sum(v["error"] is None for v in verdicts) >= 1, [v["error"] for v in verdicts]
        assert sorted(compared.ratings["model"]) == sorted([GEMMA_NAME, SMOLLM2_NAME])
    finally:
        pool.release()


def test_a_different_local_judge_is_loaded_after_the_candidate_and_judges_every_response(
    bundled_model, smollm2_model, tiny_sequence, small_rubric, store
):
    """auto_evaluate with judge SmolLM2 and candidate Gemma: responses wait, then the judge is loaded."""
    config = small_config(
        [GEMMA],
        n_ctx=JUDGE_N_CTX,
        sequence=tiny_sequence,
        judge={"model": SMOLLM2, **JUDGE},
        auto_evaluate=True,
    )
    factory = RecordingFactory()
    pool = ModelPool(factory)
    try:
        eid = jobs.enqueue(store, config, LOCAL_ADMIN)
        assert jobs.Worker(store, pool=pool).run_once()
        assert store.get_evaluation(eid)["status"] == "completed"
        # One model at a time: the candidate generated everything, was closed, then the judge loaded.
        assert factory.log == [f"load {GEMMA_NAME}", f"close {GEMMA_NAME}", f"load {SMOLLM2_NAME}"]
        assert pool.loaded_name == SMOLLM2_NAME
        messages = [e["message"] for e in store.list_events(eid)]
        queued = next(i for i, m in enumerate(messages) if "is a different local model" in m)
        loading = next(i for i, m in enumerate(messages) if m.startswith(f"loading judge {SMOLLM2_NAME}"))
        last_stored = max(i for i, m in enumerate(messages) if m.startswith(f"stored {GEMMA_NAME}"))
        assert queued < last_stored < loading
        assert "for 2 queued response(s)" in messages[loading]
        # Every response has its judgement from the judge: a score or a recorded failure, never invented.
        stored = store.list_judgements(eid)
        assert len(stored) == 2 and {j["judge_model"] for j in stored} == {SMOLLM2_NAME}
        responses = {r["id"] for r in store.list_responses(eid)}
        assert {j["response_id"] for j in stored} == responses
        rubric = catalog.load_rubric()
        for j in stored:
            if j["error"] is None:
                assert set(j["scores"]) == set(small_rubric) and rubric.scale_min <= j["overall"]
            else:
                assert_no_score(j)
    finally:
        pool.release()


def test_the_worker_switches_models_holding_one_at_a_time(bundled_model, smollm2_model, store):
    """SmolLM2 first, then Gemma: each model's conversation is done on it, the first is closed before the second."""
    factory = RecordingFactory()
    pool = ModelPool(factory)
    try:
        eid = jobs.enqueue(store, small_config([SMOLLM2, GEMMA], max_tokens=16), LOCAL_ADMIN)
        assert jobs.Worker(store, pool=pool).run_once()
        assert factory.log == [f"load {SMOLLM2_NAME}", f"close {SMOLLM2_NAME}", f"load {GEMMA_NAME}"]
        assert pool.loads == 2 and pool.loaded_name == GEMMA_NAME
        events = [e["message"] for e in store.list_events(eid)]
        loaded = [i for i, m in enumerate(events) if m.startswith("loaded model")]
        assert len(loaded) == 2
        assert events[loaded[0]].startswith(f"loaded model {SMOLLM2_NAME}")
        assert events[loaded[1]].startswith(f"loaded model {GEMMA_NAME}")
        stored_before = [m for m in events[: loaded[1]] if m.startswith("stored ")]
        stored_after = [m for m in events[loaded[1] :] if m.startswith("stored ")]
        assert len(stored_before) == len(stored_after) == 3
        assert all(m.startswith(f"stored {SMOLLM2_NAME}") for m in stored_before)
        assert all(m.startswith(f"stored {GEMMA_NAME}") for m in stored_after)
        templates = {r["model_name"]: r["template"] for r in store.list_responses(eid)}
        assert templates[GEMMA_NAME] == "plain-transcript"
        assert templates[SMOLLM2_NAME].startswith("gguf:llama:")
    finally:
        pool.release()
