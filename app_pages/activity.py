"""Activity: the audit trail (who queued, stopped, judged, deleted… and when), filtered and exported;
admins also see who has which role."""

from __future__ import annotations

import streamlit as st

from storybench_core import access
from storybench_core.views import activity as activity_view
from ui import auth, widgets

PAGE = "activity"

st.title("Activity")
store = widgets.require_store()
principal = auth.principal()

with widgets.guarded("reading the audit trail"):
    who_col, action_col, since_col = st.columns(3)
    actor = who_col.selectbox(
        "Who", activity_view.actors(store), index=None, placeholder="Everyone", key=f"{PAGE}.actor"
    )
    action = action_col.selectbox(
        "Action", access.ACTIONS, index=None, placeholder="Every action", key=f"{PAGE}.action"
    )
    since = since_col.date_input("Since (UTC)", value=None, key=f"{PAGE}.since")
    filters = activity_view.ActivityFilters(actor=actor, action=action, since=since)
    found = activity_view.entries(store, filters)
    if not found:
        st.info("No activity matches. Queueing, stopping, judging, votes and deletions show up here.")
    else:
        st.caption(f"{len(found)} entries, newest first (at most {filters.limit}).")
        st.dataframe(activity_view.entries_frame(found), hide_index=True)
        csv_col, json_col = st.columns(2)
        csv_col.download_button(
            "Download CSV",
            activity_view.csv_bytes(found),
            file_name="storybench-activity.csv",
            mime="text/csv",
            icon=":material/download:",
            key=f"{PAGE}.csv",
        )
        json_col.download_button(
            "Download JSON",
            activity_view.json_bytes(found),
            file_name="storybench-activity.json",
            mime="application/json",
            icon=":material/download:",
            key=f"{PAGE}.json",
        )

if access.allowed(principal, "view_access"):
    st.subheader("Access")
    with widgets.guarded("reading the access policy"):
        policy = access.current_policy()
        st.dataframe(activity_view.access_frame(principal, policy), hide_index=True)
        st.caption(
            activity_view.limits_caption(policy)
            + " Edit `[storybench.access]` in `.streamlit/secrets.toml` to change them."
        )
