"""Shared services of the dashboard process and thin cached reads.

`store()` and `worker()` are created once per server process through
`st.cache_resource`: every session shares one store connection and the one
background Worker that claims queued evaluations (generation never runs in a
page script). Reads go through `st.cache_data(ttl=...)` wrappers, one call
into storybench_core each. Every cached function takes the store location as
its first argument, so two STORYBENCH_HOMEs in one process (tests) never
share an entry.

`storybench serve` starts the worker with the server (ui/server.py, an st.App lifespan),
so queued runs start before anyone opens a browser. STORYBENCH_DISABLE_WORKER=1 keeps
the server from starting its worker, e.g. when a `storybench worker` process does the
work, or in tests that run the worker themselves.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import streamlit as st

from storybench_core import catalog, jobs, pairwise, paths, results
from storybench_core.access import Principal
from storybench_core.config import ModelSpec
from storybench_core.hardware import HardwareSnapshot, hardware_snapshot
from storybench_core.logs import setup_logging
from storybench_core.store.base import Doc, Store
from storybench_core.store.factory import configured_uri, open_store
from storybench_core.views import configure as configure_view
from storybench_core.views import results as results_view
from storybench_core.views.judging import JudgeJobs, JudgeJobState
from storybench_core.views.models import DownloadTracker

DISABLE_WORKER_ENV = "STORYBENCH_DISABLE_WORKER"


def store_location() -> str:
    """The configured store URI, or the SQLite file of the current STORYBENCH_HOME."""
    return configured_uri() or f"sqlite:{paths.sqlite_path()}"


def worker_enabled() -> bool:
    return os.environ.get(DISABLE_WORKER_ENV, "").strip().lower() not in ("1", "true", "yes")


# --- process-wide resources -------------------------------------------------------------


def _close_store(store: Store) -> None:
    store.close()


@st.cache_resource(show_spinner=False, on_release=_close_store)
def _store(location: str) -> Store:
    setup_logging()
    return open_store(location)


def store() -> Store:
    """The store every session of this server shares; raises StoreError when unreachable."""
    return _store(store_location())


def _stop_worker(worker: jobs.Worker | None) -> None:
    if worker is not None:
        worker.shutdown(timeout=5.0)


@st.cache_resource(show_spinner=False, on_release=_stop_worker)
def _worker(location: str, enabled: bool) -> jobs.Worker | None:
    if not enabled:
        return None
    return jobs.Worker(_store(location)).start()


def worker() -> jobs.Worker | None:
    """The server-owned worker, or None when disabled.

    `storybench serve` (ui/server.py) starts it with the server and stops it at shutdown;
    under a plain `streamlit run streamlit_app.py` it starts with the first session.
    """
    return _worker(store_location(), worker_enabled())


# When the server's lifespan started the worker (None: the first session did, or nobody yet).
_started_with_server: dict[str, datetime] = {}


def start_with_server() -> jobs.Worker | None:
    """Start the worker as the server starts (ui/server.py's lifespan), before any session."""
    started = worker()
    if started is not None:
        _started_with_server["at"] = datetime.now(UTC)
    return started


def stop_with_server(timeout_s: float = 30.0) -> None:
    """At server shutdown: stop the worker (its run ends as stopped, resumable) and judge jobs."""
    running = _worker(store_location(), worker_enabled())
    if running is not None:
        running.shutdown(timeout=timeout_s)
    _started_with_server.clear()
    for resource in (_worker, _downloads):
        resource.clear()  # on_release hooks run here, not at some later eviction


def worker_started_with_server() -> datetime | None:
    """When the server's lifespan started the worker, or None when a session started it."""
    return _started_with_server.get("at")


@st.cache_resource(show_spinner=False)
def _downloads(location: str) -> DownloadTracker:
    return DownloadTracker()


def downloads() -> DownloadTracker:
    """The process-wide model download tracker."""
    return _downloads(str(paths.models_dir()))


def judge_jobs() -> JudgeJobs:
    """Judge jobs in this server's store: queued for the worker, visible to every session."""
    return JudgeJobs(store)


def judge_now(
    evaluation_id: str, principal: Principal, judge_spec: ModelSpec | None, label: str = ""
) -> JudgeJobState:
    """Queue judging of an evaluation for principal (None: its configured judges)."""
    return judge_jobs().start(store(), evaluation_id, principal, judge_spec, label)


# --- cached reads ---------------------------------------------------------------------


@st.cache_data(ttl=1.0, show_spinner=False)
def _evaluations(location: str, limit: int) -> list[Doc]:
    return store().list_evaluations(limit=limit)


def evaluations(limit: int = 200) -> list[Doc]:
    """Newest first, whole documents (configs included)."""
    return _evaluations(store_location(), limit)


@st.cache_data(ttl=1.0, show_spinner=False)
def _evaluation_briefs(location: str, limit: int) -> list[Doc]:
    return store().list_evaluations(limit=limit, brief=True)


def evaluation_briefs(limit: int = 200) -> list[Doc]:
    """Newest first, without their configs: what the sidebar and the Run page poll every few seconds."""
    return _evaluation_briefs(store_location(), limit)


@st.cache_data(ttl=5.0, show_spinner=False)
def _response(location: str, response_id: str) -> Doc | None:
    return store().get_response(response_id)


def response(response_id: str) -> Doc | None:
    """One response with the messages the model saw."""
    return _response(store_location(), response_id)


@st.cache_data(ttl=30.0, show_spinner=False)
def _sequences(home: str) -> list[catalog.SequenceDef]:
    return catalog.list_sequences()


def sequences() -> list[catalog.SequenceDef]:
    return _sequences(str(paths.storybench_home()))


@st.cache_data(ttl=5.0, show_spinner=False)
def _saved_configs(home: str) -> list[str]:
    return configure_view.saved_config_names()


def saved_configs() -> list[str]:
    return _saved_configs(str(paths.storybench_home()))


@st.cache_data(ttl=1.0, show_spinner=False)
def hardware() -> HardwareSnapshot:
    """One snapshot per second at most, however many sessions watch."""
    return hardware_snapshot(cpu_sample_s=0.2)


@st.cache_data(ttl=5.0, show_spinner=False)
def _cached_models(home: str) -> list[Any]:
    from storybench_core.hub import cached_models

    return cached_models()


def cached_models() -> list[Any]:
    return _cached_models(str(paths.storybench_home()))


# The Results page's reads of a large evaluation: keyed by a change token (results_view.change_token)
# so a finished evaluation is read once; the ttl catches judgements written by another process.
@st.cache_data(ttl=60.0, show_spinner=False, max_entries=4)
def _response_stats(location: str, token: tuple[Any, ...]) -> pd.DataFrame:
    return results_view.response_stats(store())


def response_stats(token: tuple[Any, ...]) -> pd.DataFrame:
    """Every stored response without its text (the store's flat projection), with each model's source."""
    return _response_stats(store_location(), token)


@st.cache_data(ttl=10.0, show_spinner=False, max_entries=32)
def _texts(location: str, response_ids: tuple[str, ...]) -> dict[str, Doc]:
    return results_view.text_docs(store(), response_ids)


def texts(response_ids: tuple[str, ...]) -> dict[str, Doc]:
    """id → {response, error} for the few rows on screen."""
    return _texts(store_location(), response_ids)


@st.cache_data(ttl=60.0, show_spinner=False, max_entries=8)
def _scores(location: str, evaluation_id: str, token: tuple[Any, ...]) -> pd.DataFrame:
    return results.responses_frame(store(), evaluation_id)


def scores(evaluation_id: str, token: tuple[Any, ...] = ()) -> pd.DataFrame:
    """One evaluation's responses joined with their judgements (results.responses_frame)."""
    return _scores(store_location(), evaluation_id, token)


@st.cache_data(ttl=300.0, show_spinner=False, max_entries=16)
def _sample_text_metrics(
    location: str, evaluation_id: str, conversations: tuple[tuple[str, str, int], ...], token: tuple[Any, ...]
) -> pd.DataFrame:
    return results.sample_text_metrics(store(), evaluation_id, conversations)


def sample_text_metrics(
    evaluation_id: str, conversations: tuple[tuple[str, str, int], ...], token: tuple[Any, ...] = ()
) -> pd.DataFrame:
    """Text metrics of the responses of a few conversations (results.text_sample chooses them)."""
    return _sample_text_metrics(store_location(), evaluation_id, conversations, token)


@st.cache_data(ttl=10.0, show_spinner=False)
def _pairwise(location: str, evaluation_id: str) -> pairwise.PairwiseReport:
    return pairwise.pairwise_report(store(), evaluation_id)


def pairwise_report(evaluation_id: str) -> pairwise.PairwiseReport:
    """Pairwise ratings per judge and for the team votes, position bias, human agreement."""
    return _pairwise(store_location(), evaluation_id)


@st.cache_data(ttl=5.0, show_spinner=False)
def _compare(
    location: str, evaluation_id: str, sequence: str, prompt_index: int, run: int, models: tuple[str, ...]
) -> pd.DataFrame:
    return results.compare_frame(store(), evaluation_id, sequence, prompt_index, run, list(models))


def compare(
    evaluation_id: str, sequence: str, prompt_index: int, run: int, models: tuple[str, ...]
) -> pd.DataFrame:
    """Several models' responses to one prompt, with scores and justifications (results.compare_frame)."""
    return _compare(store_location(), evaluation_id, sequence, prompt_index, run, models)


def refresh_after_write() -> None:
    """Drop cached reads a write may have changed, so this session sees it at once."""
    for cached in (_evaluations, _evaluation_briefs, _response, _saved_configs, _cached_models):
        cached.clear()
    for cached in (_response_stats, _texts):
        cached.clear()
    refresh_scores()


def refresh_scores() -> None:
    """Drop the cached score reads (after judging)."""
    for cached in (_scores, _sample_text_metrics, _pairwise, _compare):
        cached.clear()
