"""Real judging on the bundled model (Gemma 3 270M via llama.cpp): constrained output parses every time."""

from __future__ import annotations

import time

import pytest

from storybench_core import catalog, jobs, judge, results
from storybench_core.access import LOCAL_ADMIN
from storybench_core.config import parse_config
from storybench_core.runner import ModelPool
from storybench_core.store.sqlite import SQLiteStore

pytestmark = pytest.mark.slow


def test_bundled_model_judges_a_small_run_with_schema_constrained_output(bundled_model, tmp_path):
    config = parse_config(
        {
            "models": [{"kind": "bundled"}],
            "sequences": ["film"],
            "generation": {"runs": 1, "max_tokens": 32, "n_ctx": 4096, "temperature": 0.7},
            "judge": {"model": {"kind": "bundled"}, "max_tokens": 300, "max_retries": 1},
            "auto_evaluate": True,
        }
    )
    store = SQLiteStore(tmp_path / "slow-judge.db")
    pool = ModelPool()
    started = time.monotonic()
    try:
        eid = jobs.enqueue(store, config, LOCAL_ADMIN)
        # auto_evaluate: the judge is the candidate model, so it judges on the loaded instance.
        assert jobs.Worker(store, pool=pool).run_once()
        assert pool.loads == 1
        rubric = catalog.load_rubric()
        stored = store.list_judgements(eid)
        assert len(stored) == 3
        for j in stored:
            assert j["error"] is None, (j["error"], j["raw_output"])
            assert j["structured_output"] == "json_schema"
            assert set(j["scores"]) == set(rubric.criterion_ids)
            assert all(rubric.scale_min <= v["score"] <= rubric.scale_max for v in j["scores"].values())
            assert all(v["justification"].strip() for v in j["scores"].values())
            assert j["overall"] == pytest.approx(
                sum(v["score"] for v in j["scores"].values()) / len(rubric.criteria), abs=1e-3
            )
        messages = [e["message"] for e in store.list_events(eid)]
        assert sum(m.startswith("judged gemma-3-270m") for m in messages) == 3
        # Judging again later finds nothing left to do, and the leaderboard reads the scores.
        again = judge.judge_evaluation(store, eid, pool=pool)
        assert (again.judged, again.skipped) == (0, 3)
        board = results.leaderboard(results.responses_frame(store, eid))
        assert board.iloc[0]["n_scored"] == 3 and board.iloc[0]["n_failed_judgements"] == 0
    finally:
        pool.release()
        store.close()
    print(f"3 responses generated and judged in {time.monotonic() - started:.0f} s")


def test_bundled_judge_scores_many_responses_through_the_batch_path(bundled_model, tmp_path):
    """`storybench judge` on stored responses: the local judge decodes them together (llama_batch.py)."""
    config = parse_config(
        {
            "models": [{"kind": "bundled"}],
            "sequences": ["film"],
            "generation": {"runs": 1, "max_tokens": 16, "n_ctx": 4096, "temperature": 0.7},
            "judge": {"model": {"kind": "bundled"}, "max_tokens": 300, "max_retries": 1},
        }
    )
    store = SQLiteStore(tmp_path / "batch-judge.db")
    pool = ModelPool()
    try:
        eid = jobs.enqueue(store, config, LOCAL_ADMIN)
        assert jobs.Worker(store, pool=pool).run_once()
        summary = judge.judge_evaluation(store, eid, pool=pool)
        assert (summary.judged, summary.failed) == (3, 0)
        assert any("3 judgements at a time" in e["message"] for e in store.list_events(eid))
        rubric = catalog.load_rubric()
        for j in store.list_judgements(eid):
            assert j["error"] is None and set(j["scores"]) == set(rubric.criterion_ids)
            assert all(rubric.scale_min <= v["score"] <= rubric.scale_max for v in j["scores"].values())
        # Three different responses, three separate judgements (no cross-talk between sequences).
        assert len({j["response_id"] for j in store.list_judgements(eid)}) == 3
    finally:
        pool.release()
        store.close()
