"""Run: queue a saved configuration, watch the active evaluation live, the queue and history."""

from __future__ import annotations

import streamlit as st

from storybench_core import access, archive, jobs
from storybench_core.store.base import Doc
from storybench_core.text_safety import safe_inline, safe_markdown
from storybench_core.views import configure as configure_view
from storybench_core.views import run as run_view
from ui import auth, services, widgets

PAGE = "run"

st.title("Run")
store = widgets.require_store()
widgets.show_flash(PAGE)
principal = auth.principal()

# A shared link (?evaluation=ID) picks the evaluation to watch.
if "evaluation" in st.query_params and f"{PAGE}.selected" not in st.session_state:
    st.session_state[f"{PAGE}.selected"] = st.query_params["evaluation"]


def queue_saved(name: str) -> str:
    eid = jobs.enqueue(store, configure_view.load_named_config(name), principal)
    st.session_state[f"{PAGE}.selected"] = eid
    st.query_params["evaluation"] = eid
    return eid


if access.allowed(principal, "queue"):
    with st.expander("Start a run from a saved configuration", icon=":material/playlist_add:"):
        saved = services.saved_configs()
        if not saved:
            st.info(
                "No saved configurations yet. Build one on **Configure** and save it, or queue it from there."
            )
            st.page_link("app_pages/configure.py", label="Open Configure", icon=":material/tune:")
        else:
            choice = st.selectbox("Saved configuration", saved, key=f"{PAGE}.saved")
            st.button(
                "Queue run",
                key=f"{PAGE}.queue",
                icon=":material/play_arrow:",
                on_click=widgets.run_action,
                args=(PAGE, "queueing the run", queue_saved, choice),
                kwargs={"done": f"Queued '{choice}'. A worker picks it up within seconds."},
            )


def actions(view: run_view.RunView) -> None:
    """Stop / Resume / Reset for the watched evaluation (operators and admins)."""
    if not access.allowed(principal, "stop"):
        return
    allowed = run_view.allowed_actions(view.status)
    stop, resume, reset = st.columns(3)
    stop.button(
        "Stop",
        key=f"{PAGE}.stop",
        icon=":material/stop:",
        disabled="stop" not in allowed,
        width="stretch",
        on_click=widgets.run_action,
        args=(PAGE, "stopping the run", jobs.request_stop, store, view.evaluation_id, principal),
        kwargs={"done": "Stop requested; the worker stops within seconds."},
    )
    resume.button(
        "Resume",
        key=f"{PAGE}.resume",
        icon=":material/replay:",
        disabled="resume" not in allowed,
        help="Queue it again; only the missing tasks run.",
        width="stretch",
        on_click=widgets.run_action,
        args=(PAGE, "resuming the run", jobs.requeue, store, view.evaluation_id, principal),
        kwargs={"done": "Requeued; only the missing tasks will run."},
    )
    reset.button(
        "Reset",
        key=f"{PAGE}.reset",
        icon=":material/restart_alt:",
        disabled="reset" not in allowed,
        help="For a run whose worker died: mark it stopped so it can be resumed.",
        width="stretch",
        on_click=widgets.run_action,
        args=(PAGE, "resetting the run", jobs.reset, store, view.evaluation_id, principal),
        kwargs={"done": "Reset to stopped; resume it to finish."},
    )


def delete_with_export(evaluation_id: str) -> None:
    path = archive.export_then_delete(
        store, evaluation_id, principal, archive.default_export_path(evaluation_id)
    )
    st.session_state.pop(f"{PAGE}.selected", None)
    st.query_params.pop("evaluation", None)
    widgets.flash(PAGE, "success", f"Exported to `{path}` on the server, then deleted {evaluation_id}.")


def clean_up(doc: Doc) -> None:
    """Archive / Restore and export-then-delete for a finished evaluation (admins only)."""
    if not access.allowed(principal, "archive") or doc["status"] in ("queued", "running", "stopping"):
        return
    eid = doc["id"]
    with st.expander("Archive or delete (admin)", icon=":material/inventory_2:"):
        if archive.is_archived(doc):
            st.caption("Archived: hidden from Results, the leaderboard and Vote; its data is kept.")
            st.button(
                "Restore from the archive",
                key=f"{PAGE}.restore",
                on_click=widgets.run_action,
                args=(PAGE, "restoring the evaluation", archive.restore_evaluation, store, eid, principal),
                kwargs={"done": "Restored: the evaluation shows in Results again."},
            )
        else:
            st.button(
                "Archive",
                key=f"{PAGE}.archive",
                help="Hide it from Results, the leaderboard and Vote; keep every response and score.",
                on_click=widgets.run_action,
                args=(PAGE, "archiving the evaluation", archive.archive_evaluation, store, eid, principal),
                kwargs={"done": "Archived: hidden from Results; restore it here any time."},
            )
        sure = st.checkbox(
            "Export everything to a JSON file on the server, then delete it from the store",
            key=f"{PAGE}.delete_confirm.{eid}",
        )
        st.button(
            "Export and delete",
            key=f"{PAGE}.delete",
            type="primary",
            icon=":material/delete:",
            disabled=not sure,
            on_click=widgets.run_action,
            args=(PAGE, "deleting the evaluation", delete_with_export, eid),
        )


def console_for(evaluation_id: str) -> run_view.ConsoleBuffer:
    """This session's console buffer; a new session (or a refresh) reads the whole history once."""
    buffer = st.session_state.get(f"{PAGE}.console")
    if buffer is None or buffer.evaluation_id != evaluation_id:
        buffer = run_view.ConsoleBuffer(evaluation_id)
        st.session_state[f"{PAGE}.console"] = buffer
    buffer.refresh(store)
    return buffer


def watched() -> Doc | None:
    return run_view.watched_evaluation(services.evaluation_briefs(), st.session_state.get(f"{PAGE}.selected"))


def live() -> None:
    """The watched evaluation, re-read from the store on a timer."""
    doc = watched()
    if doc is None:
        st.info("No evaluations yet. Configure one on **Configure** and queue it; it shows up here.")
        return
    view = run_view.run_view(doc)
    if view.is_active != ACTIVE:
        # Started or finished: redraw the whole page (history too) and switch the refresh interval.
        st.rerun()
    st.subheader(safe_inline(view.name))
    st.markdown(
        f"{widgets.status_badge(view.status)} evaluation `{view.evaluation_id}` · config `{view.config_hash}`"
    )
    st.progress(view.fraction, text=view.progress_label)
    tasks, speed, elapsed, eta = st.columns(4)
    tasks.metric("Tasks done", f"{view.done + view.failed} / {view.total}")
    speed.metric(view.speed_label, f"{view.tokens_per_s:.1f}" if view.tokens_per_s is not None else "—")
    elapsed.metric("Elapsed", run_view.format_duration(view.elapsed_s))
    eta.metric("Remaining (est.)", run_view.format_duration(view.eta_s))
    actions(view)
    clean_up(doc)
    if view.error:
        st.error(safe_markdown(view.error), icon=":material/error:")
    if view.current_label:
        st.caption(("Now writing: " if view.is_live else "Last task: ") + safe_inline(view.current_label))
    if view.is_live and view.per_run_speed:
        st.caption(view.per_run_speed)
    if view.is_live and view.partial_text:
        with st.container(height=220, border=True, autoscroll=True):
            st.text(view.partial_text)
    buffer = console_for(view.evaluation_id)
    # Not used as a context manager: leaving `with st.status()` would flip it to "complete".
    console = st.status(
        f"Console · {len(buffer.lines)} lines",
        state=run_view.status_state(view.status),
        expanded=view.is_active,
    )
    console.code(buffer.text, language=None, wrap_lines=True, height=buffer.height())


@st.fragment(run_every=5.0)
def history() -> None:
    """The queue and every past evaluation; choosing one shows it above."""
    docs = services.evaluation_briefs()
    st.subheader("Queue and history")
    if not docs:
        st.caption("Nothing queued or run yet.")
        return
    st.dataframe(run_view.evaluations_frame(docs), hide_index=True)
    labels = {d["id"]: run_view.evaluation_label(d) for d in docs}
    current = st.session_state.get(f"{PAGE}.selected")
    if current is not None and current not in labels:
        del st.session_state[f"{PAGE}.selected"]
    chosen = st.selectbox(
        "Watch evaluation",
        list(labels),
        index=None,
        key=f"{PAGE}.selected",
        format_func=labels.get,
        placeholder="The running one (or the newest)",
    )
    # Mirror the choice in the URL so the link can be shared; a full rerun shows it above.
    if chosen != st.query_params.get("evaluation"):
        if chosen:
            st.query_params["evaluation"] = chosen
        else:
            del st.query_params["evaluation"]
        st.rerun()


# Poll every second while something is queued or running, every five seconds otherwise.
ACTIVE = run_view.run_view(current).is_active if (current := watched()) else False
st.fragment(run_every=run_view.refresh_interval_s(ACTIVE))(live)()
history()
