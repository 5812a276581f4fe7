"""Dashboard test fixtures: the app under AppTest, a real SQLite store in the test's home, fixture runs.

This folder has no __init__.py on purpose: as a package it would be named
`ui` (tests/ has no __init__.py) and shadow the dashboard's own `ui` package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from storybench_core import jobs, paths
from storybench_core.access import LOCAL_ADMIN
from storybench_core.config import RunConfig, parse_config
from storybench_core.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "streamlit_app.py"
TIMEOUT_S = 30


@pytest.fixture(autouse=True)
def _no_server_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run the worker themselves, so what a page shows is deterministic."""
    monkeypatch.setenv("STORYBENCH_DISABLE_WORKER", "1")


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    st.cache_data.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()  # closes the stores the app opened


@pytest.fixture
def option() -> Iterator[Callable[[str, Any], None]]:
    """Set a Streamlit config option for one test (options are process-wide), then put it back."""
    saved: dict[str, Any] = {}

    def set_option(name: str, value: Any) -> None:
        saved.setdefault(name, st_config.get_option(name))
        st_config.set_option(name, value)

    yield set_option
    for name, value in saved.items():
        st_config.set_option(name, value)


@pytest.fixture
def store(storybench_home: Path) -> Iterator[SQLiteStore]:
    """The same SQLite file the dashboard opens (STORYBENCH_HOME/storybench.db)."""
    s = SQLiteStore(paths.sqlite_path())
    yield s
    s.close()


def fake_config(
    name: str = "fixture run",
    *,
    runs: int = 1,
    sequences: tuple[str, ...] = ("film",),
    models: tuple[dict[str, Any], ...] = ({"kind": "fake", "name": "fake-short", "options": {"words": 12}},),
    delay_s: float = 0.0,
) -> RunConfig:
    specs = [m | {"options": m.get("options", {}) | {"delay_s": delay_s}} for m in models]
    return parse_config(
        {
            "name": name,
            "models": specs,
            "sequences": list(sequences),
            "generation": {"runs": runs, "max_tokens": 64},
        }
    )


TWO_MODELS = (
    {"kind": "fake", "name": "fake-short", "options": {"words": 12}},
    {"kind": "fake", "name": "fake-long", "options": {"words": 48}},
)


def run_evaluation(store: SQLiteStore, config: RunConfig) -> str:
    """Queue a config and run it to the end with a worker in this thread."""
    eid = jobs.enqueue(store, config, LOCAL_ADMIN)
    assert jobs.Worker(store).run_once()
    return eid


def add_api_response(
    store: SQLiteStore, evaluation_id: str, text: str = "An API model wrote this story."
) -> str:
    """A stored response as an API model would leave it (no network needed)."""
    now = datetime.now(UTC)
    return store.upsert_response(
        {
            "evaluation_id": evaluation_id,
            "task_key": f"{evaluation_id}|api-model|film|1|0",
            "model_name": "api-model",
            "model_ref": {"kind": "api", "base_url": "http://127.0.0.1:9/v1", "api_model": "story-1"},
            "sequence": "film",
            "run": 1,
            "prompt_index": 0,
            "prompt_name": "concept",
            "prompt_text": "Pitch a film.",
            "messages": [{"role": "user", "content": "Pitch a film."}],
            "response": text,
            "finish_reason": "stop",
            "prompt_tokens": 5,
            "completion_tokens": 7,
            "generation_time_s": 0.5,
            "tokens_per_s": 14.0,
            "seed": 42,
            "created_at": now,
            "error": None,
        }
    )


def open_app(page: str | None = None, query: dict[str, Any] | None = None) -> AppTest:
    """A new session of the whole app (navigation, sidebar), on a page, optionally opened from a link."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    at.run()
    if page is not None:
        at.switch_page(page)
        for name, value in (query or {}).items():
            at.query_params[name] = value
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def rerun(at: AppTest) -> AppTest:
    """Run the script again as a timer tick would, after the read caches' ttl has passed."""
    st.cache_data.clear()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements: Any) -> list[str]:
    return [str(e.value) for e in elements]


def button(at: AppTest, label: str) -> Any:
    """The (form submit) button with this label."""
    found = [b for b in at.button if b.label == label]
    assert found, f"no button '{label}' among {[b.label for b in at.button]}"
    return found[0]


class Helpers:
    """The helpers above as one fixture (test modules cannot import a conftest)."""

    TWO_MODELS = TWO_MODELS
    fake_config = staticmethod(fake_config)
    run_evaluation = staticmethod(run_evaluation)
    add_api_response = staticmethod(add_api_response)
    open_app = staticmethod(open_app)
    rerun = staticmethod(rerun)
    texts = staticmethod(texts)
    button = staticmethod(button)


@pytest.fixture
def ui() -> Helpers:
    return Helpers()
