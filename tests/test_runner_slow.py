"""The core engine on the real bundled model (Gemma 3 270M, llama.cpp), a real SQLite file and the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from storybench_core.store.sqlite import SQLiteStore

pytestmark = pytest.mark.slow


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "storybench_core.cli", *args]


def test_three_turn_sequence_on_the_real_model(bundled_model, tmp_path, storybench_home):
    config = {
        "models": [{"kind": "bundled"}],
        "sequences": ["film"],
        "generation": {"runs": 1, "max_tokens": 32, "n_ctx": 2048, "temperature": 0.7},
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    out = subprocess.run(
        cli("run", str(path)), capture_output=True, text=True, timeout=600, env=os.environ.copy()
    )
    assert out.returncode == 0, out.stderr[-2000:]
    eid = out.stdout.strip().splitlines()[-1].split(": ")[1]
    assert "gemma-3-270m" in out.stdout  # the summary table
    store = SQLiteStore(storybench_home / "storybench.db")
    docs = store.list_responses(eid)
    assert [d["prompt_index"] for d in docs] == [0, 1, 2]
    for d in docs:
        assert d["error"] is None
        assert d["response"].strip()
        assert d["prompt_tokens"] > 0 and 0 < d["completion_tokens"] <= 32
        assert d["tokens_per_s"] > 0 and d["finish_reason"] in ("stop", "length")
        assert d["template"] == "plain-transcript"
    contents = [m["content"] for m in docs[2]["messages"]]
    assert docs[0]["response"] in contents and docs[1]["response"] in contents
    # Later turns reuse the cached prefix: far fewer prompt tokens evaluated than sent.
    assert docs[2]["prompt_tokens_evaluated"] < docs[2]["prompt_tokens"] / 2
    store.close()


def test_kill_9_mid_run_then_resume_loses_nothing_and_duplicates_nothing(
    bundled_model, tmp_path, storybench_home
):
    config = {
        "models": [{"kind": "bundled"}],
        "sequences": ["film", "thriller"],
        "generation": {"runs": 1, "max_tokens": 24, "n_ctx": 2048},
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    db = storybench_home / "storybench.db"
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(
        cli("run", str(path)), stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()
    )
    deadline = time.monotonic() + 300
    store = None
    stored_before = 0
    while time.monotonic() < deadline:
        if db.exists():
            store = store or SQLiteStore(db)
            evals = store.list_evaluations()
            if evals:
                stored_before = store.count_responses(evals[0]["id"])
                if stored_before >= 2:
                    break
        time.sleep(0.2)
    assert store is not None and stored_before >= 2, (tmp_path / "run.log").read_text()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    eid = store.list_evaluations()[0]["id"]
    after_kill = store.list_responses(eid)
    assert len(after_kill) >= stored_before  # nothing committed was lost
    assert store.get_evaluation(eid)["status"] == "running"  # the dead worker never finished it

    out = subprocess.run(
        cli("run", "--resume", eid), capture_output=True, text=True, timeout=600, env=os.environ.copy()
    )
    assert out.returncode == 0, out.stderr[-2000:]
    docs = store.list_responses(eid)
    assert len(docs) == 6
    assert len({d["task_key"] for d in docs}) == 6
    kept = {d["task_key"]: d["id"] for d in after_kill}
    assert all(kept[d["task_key"]] == d["id"] for d in docs if d["task_key"] in kept)  # stored ones untouched
    assert store.get_evaluation(eid)["status"] == "completed"
    store.close()
