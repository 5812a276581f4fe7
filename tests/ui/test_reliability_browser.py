"""In a real browser: a judge's reliability card and warning beside its leaderboard (screenshot).

The evaluation and its judgements come from the scripted fake backend (fast to make); the card is the
one a calibration job files for a judge that gives every rung the same score — what the bundled Gemma
does (tests/test_calibration_slow.py calibrates it for real). The server is the real Storybench server
(`streamlit run storybench_server.py`) driven by Debian's chromium through Playwright.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from storybench_core import jobs
from storybench_core.access import LOCAL_ADMIN
from storybench_core.calibration.metrics import RungScore, compute_card
from storybench_core.config import parse_config
from storybench_core.store.sqlite import SQLiteStore
from tests.ui.servers import chromium, new_tab, settle, shot, storybench_server

pytestmark = pytest.mark.slow


def seeded(home: Path) -> str:
    store = SQLiteStore(home / "storybench.db")
    try:
        config = parse_config(
            {
                "name": "judged by a small judge",
                "models": [
                    {"kind": "fake", "name": "fake-short", "options": {"words": 20}},
                    {"kind": "fake", "name": "fake-long", "options": {"words": 60}},
                ],
                "sequences": ["film"],
                "generation": {"runs": 1, "max_tokens": 64},
                "judge": {"model": {"kind": "fake", "name": "fake-judge"}},
                "auto_evaluate": True,
            }
        )
        eid = jobs.enqueue(store, config, LOCAL_ADMIN)
        assert jobs.Worker(store).run_once()
        assert store.list_judgements(eid)
        card = compute_card(
            [RungScore(x, k, 1, 1.0) for x in "ab" for k in range(4)], retested=False
        ).to_dict()
        job = store.create_job({"kind": "calibrate", "evaluation_id": eid, "status": "completed"})
        store.update_job(job, {"result": card | {"judge": "fake-judge", "identity": {"key": "seeded"}}})
        return eid
    finally:
        store.close()


def test_the_card_and_warning_show_beside_the_leaderboard(storybench_home: Path) -> None:
    eid = seeded(storybench_home)
    with storybench_server(storybench_home, "reliability") as server, chromium() as browser:
        page = new_tab(browser)
        page.goto(f"{server.url}/results?evaluation={eid}")
        settle(page)
        page.get_by_role("tab", name="Leaderboard").click()
        page.get_by_text("fake-judge cannot order a degraded ladder").first.wait_for(timeout=60_000)
        page.get_by_text("Reliability card · fake-judge").first.click()
        settle(page)
        assert page.get_by_text("Ladder accuracy (adjacent rungs ordered right)").count() >= 1
        shot(page, "results-judge-card")
        assert "Traceback" not in page.content()
