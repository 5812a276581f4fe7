"""Rendering pieces shared by the pages, and the one place errors become st.error.

A StorybenchError is the user's to fix: its message (what, where, how to fix)
goes on the page as it is. Anything else is a bug: the traceback goes to the
log file and the page gets one generic line. No traceback ever reaches the
page (`.streamlit/config.toml` also sets showErrorDetails = "none").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import streamlit as st

from storybench_core import paths
from storybench_core.errors import StorybenchError
from storybench_core.redact import redact
from storybench_core.store.base import Store
from storybench_core.text_safety import safe_inline, safe_markdown
from storybench_core.views import run as run_view
from ui import services

log = logging.getLogger("storybench.ui")

STATUS_COLORS = {
    "queued": "gray",
    "running": "blue",
    "stopping": "orange",
    "stopped": "orange",
    "completed": "green",
    "failed": "red",
}


def error_message(exc: BaseException, what: str) -> str:
    """The text shown for an error: ours as is, anything else as a generic line (logged with traceback)."""
    if isinstance(exc, StorybenchError):
        return safe_markdown(redact(str(exc)))  # it may quote a model's or a server's words
    log.error("unexpected error while %s", what, exc_info=exc)
    return (
        f"Something went wrong while {what} ({type(exc).__name__}). "
        f"The details are in the log file: {paths.log_path()}"
    )


def show_error(exc: BaseException, what: str) -> None:
    st.error(error_message(exc, what), icon=":material/error:")


@contextmanager
def guarded(what: str) -> Iterator[None]:
    """Show any error raised inside as st.error instead of a traceback.

    Streamlit's own control flow (st.stop, st.rerun) derives from BaseException
    and passes through untouched.
    """
    try:
        yield
    except Exception as exc:
        show_error(exc, what)


# --- flash messages from callbacks --------------------------------------------------------


def flash(page: str, kind: str, message: str) -> None:
    """Queue a message for the next run of a page (callbacks run before the page is drawn)."""
    st.session_state.setdefault(f"{page}.flash", []).append((kind, message))


def show_flash(page: str) -> None:
    for kind, message in st.session_state.pop(f"{page}.flash", []):
        {"error": st.error, "warning": st.warning, "success": st.success}.get(kind, st.info)(message)


def run_action(page: str, what: str, action: Callable[..., Any], *args: Any, done: str | None = None) -> Any:
    """Run a button's action (a callback): success or error becomes a flash message."""
    try:
        result = action(*args)
    except Exception as exc:
        flash(page, "error", error_message(exc, what))
        return None
    services.refresh_after_write()
    if done:
        flash(page, "success", done)
    return result


# --- small pieces -----------------------------------------------------------------------


def field_errors(messages: Iterable[str]) -> None:
    """Validation messages right under the field they concern."""
    for message in messages:
        st.error(message, icon=":material/error:")


def status_badge(status: str) -> str:
    """Markdown for a coloured status badge."""
    return f":{STATUS_COLORS.get(status, 'gray')}-badge[{status}]"


def require_store() -> Store:
    """The shared store, or an st.error with the fix and a stop of this page."""
    try:
        return services.store()
    except Exception as exc:
        show_error(exc, "opening the store")
        st.stop()
        raise  # unreachable: st.stop raises


@st.fragment(run_every=3.0)
def sidebar_status() -> None:
    """Store location (password masked) and what the workers are doing, refreshed every 3 s."""
    try:
        store = services.store()
    except Exception as exc:
        show_error(exc, "opening the store")
        return
    st.caption("Store")
    st.code(redact(store.describe()), language=None, wrap_lines=True)
    with guarded("starting the worker"):
        worker = services.worker()
        docs = services.evaluation_briefs()
        st.caption("Worker")
        if worker is None:
            st.markdown(":gray-badge[off] this server runs no worker (STORYBENCH_DISABLE_WORKER)")
        elif not worker.alive:
            st.markdown(":red-badge[stopped] the dashboard's worker thread has stopped; see the log file")
        elif worker.current:
            name = next((d.get("name") for d in docs if d["id"] == worker.current), worker.current)
            st.markdown(f":blue-badge[busy] running **{safe_inline(name)}**")
        else:
            st.markdown(":green-badge[idle] waiting for queued runs")
        if worker is not None:
            started = services.worker_started_with_server()
            st.caption(
                f"Started with the server at {started:%H:%M} UTC; it stops with the server."
                if started
                else "Started with the first session (`make run` starts it with the server)."
            )
        if worker is not None and worker.last_error:
            st.caption(f"Last worker error: {safe_markdown(redact(worker.last_error))}")
        others = run_view.workers_seen(docs, worker.worker_id if worker else None)
        for other in others:
            st.caption(f"Also working: worker {other}")
    unreadable_rows_flag(store)


def unreadable_rows_flag(store: Store) -> None:
    """Say so when reads skipped damaged rows (store/unreadable.py): they are in no list."""
    skipped = store.unreadable_rows()
    if skipped:
        st.warning(
            f"{len(skipped)} stored row(s) could not be read and are left out of the lists "
            f"(first: {skipped[0].collection} {skipped[0].row_id}); details in the log file: {paths.log_path()}",
            icon=":material/warning:",
        )
