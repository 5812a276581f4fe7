"""Calibrating the real bundled judge (Gemma 3 270M via llama.cpp) on real responses of its own.

Measured on this project's CPUs (AMD EPYC, 2 threads): it gives every rung the same mean score and
picks the first-shown text in every pair, so its card says it cannot order a degraded ladder. The
test asserts that verdict (the issue's acceptance check) and that the card is filed and found again.
"""

from __future__ import annotations

import json

import pytest

from storybench_core import calibration
from storybench_core.cli import main
from storybench_core.store.factory import open_store

pytestmark = pytest.mark.slow


def test_bundled_gemma_cannot_order_a_degraded_ladder(bundled_model, tmp_path, capsys):
    config = {
        "name": "calibration source",
        "models": [{"kind": "bundled"}],
        "sequences": ["film"],
        "generation": {"runs": 1, "max_tokens": 96, "temperature": 0.0},
        "judge": {"model": {"kind": "bundled"}, "max_tokens": 300, "max_retries": 1},
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    assert main(["run", str(path)]) == 0
    eid = capsys.readouterr().out.strip().splitlines()[-1].split(": ")[1]
    code = main(
        ["calibrate-judge", "--judge", "bundled", "--evaluation", eid, "--rungs", "4", "--attempts", "2",
         "--ladders", "1", "--format", "json"]
    )  # fmt: skip
    assert code == 0
    card = json.loads(capsys.readouterr().out)
    assert (card["ladders"], card["rungs"], card["attempts"], card["judgements"]) == (1, 4, 2, 8)
    assert card["failed_judgements"] < card["judgements"]  # it answered; the answers just do not order
    assert card["verdict"] == calibration.CANNOT, card
    assert card["identity"]["id"].startswith("sha256:")  # filed under the model file's hash
    store = open_store(None)
    try:
        view = calibration.card_for(store, card["judge"], card["identity"]["key"])
        assert view.calibrated and view.verdict == calibration.CANNOT
    finally:
        store.close()
