"""Pairwise judging on the real bundled model: two stored evaluations compared, every verdict parseable.

Six judge calls of about 30 tokens each (about 1 minute in all on 2 idle cores).
"""

from __future__ import annotations

import pytest

from storybench_core import jobs, pairwise
from storybench_core.access import LOCAL_ADMIN
from storybench_core.config import ModelSpec, parse_config
from storybench_core.store.sqlite import SQLiteStore

pytestmark = pytest.mark.slow


def run(store: SQLiteStore, name: str, temperature: float) -> str:
    config = parse_config(
        {
            "name": name,
            "models": [{"kind": "bundled", "name": name}],
            "sequences": ["film"],
            "generation": {"runs": 1, "max_tokens": 48, "n_ctx": 4096, "temperature": temperature},
        }
    )
    eid = jobs.enqueue(store, config, LOCAL_ADMIN)
    assert jobs.Worker(store).run_once()
    assert store.count_responses(eid, errors=False) == 3
    return eid


def test_pairwise_judging_of_two_stored_runs_on_the_bundled_model(bundled_model, storybench_home):
    store = SQLiteStore(storybench_home / "storybench.db")
    cool = run(store, "gemma-cool", 0.2)
    warm = run(store, "gemma-warm", 1.2)
    events: list[tuple[str, str]] = []
    summary = pairwise.compare_judge_evaluation(
        store,
        [cool, warm],
        ModelSpec(kind="bundled", name="gemma-judge"),
        budget=8,
        event=lambda level, message, **f: events.append((level, message)),
        n_boot=200,
    )
    verdicts = store.list_verdicts(summary.scope, judge="gemma-judge")
    assert len(verdicts) == 6, events  # 3 prompts × both orders
    for v in verdicts:
        assert v["error"] is None, v
        assert v["structured_output"] == "json_schema"
        labels, _reason = pairwise.parse_verdict(v["raw_output"], pairwise.DEFAULT_GROUPS)
        assert labels == v["groups"] and set(labels.values()) <= set(pairwise.LABELS)
        assert v["model_a"] != v["model_b"] and v["budget_chars"] == pairwise.DEFAULT_BUDGET_CHARS
    assert sorted(summary.ratings["model"]) == ["gemma-cool", "gemma-warm"]
    assert summary.ratings["comparisons"].tolist() == [3, 3]
    assert summary.position_bias.loc[0, "verdicts"] == 6
    # The judge shares the writers' family (the same model): that is flagged.
    assert summary.warnings and any(level == "warning" for level, _ in events)
    store.close()
