"""Storybench dashboard: `make run` / `storybench serve` (storybench_server.py runs this script).

The pages are registered explicitly with st.navigation; the sidebar shows who is
signed in, the store and the worker. Everyone signs in first when sign-in is
configured (ui.auth); pages act as the session's principal. The server owns one
background worker (ui.services; `storybench serve` starts it with the server) that
runs queued evaluations, so pages only read and write the store.
"""

from __future__ import annotations

import streamlit as st

from ui import auth, services, widgets

st.set_page_config(page_title="Storybench", page_icon=":material/auto_stories:", layout="wide")

# The page scripts live in app_pages/, not pages/: with a pages/ folder beside this file,
# Streamlit runs a page URL opened before any session has called st.navigation (e.g. a
# bookmark right after a restart) as a legacy standalone page, skipping this file.
PAGES = [
    st.Page("app_pages/configure.py", title="Configure", icon=":material/tune:", default=True),
    st.Page("app_pages/run.py", title="Run", icon=":material/play_circle:"),
    st.Page("app_pages/results.py", title="Results", icon=":material/table_chart:"),
    st.Page("app_pages/models.py", title="Models", icon=":material/download:"),
    st.Page("app_pages/vote.py", title="Vote", icon=":material/how_to_vote:"),
    st.Page("app_pages/activity.py", title="Activity", icon=":material/history:"),
    st.Page("app_pages/hardware.py", title="Hardware", icon=":material/memory:"),
]

try:  # who may use this server: a misconfigured or unsafe one shows why and serves nothing
    mode = auth.server_mode()
except Exception as exc:
    widgets.show_error(exc, "checking who may use this server")
    st.stop()

with widgets.guarded("starting the background worker"):
    services.worker()  # one per server process (storybench serve starts it with the server)

try:
    me = auth.sign_in_gate()  # the sign-in screen, and a stop, for anyone not signed in
except Exception as exc:
    widgets.show_error(exc, "signing you in")
    st.stop()

page = st.navigation(PAGES)

with st.sidebar:
    auth.sidebar_identity(mode, me)
    widgets.sidebar_status()

auth.notice(mode)
with widgets.guarded(f"showing the {page.title} page"):
    page.run()
