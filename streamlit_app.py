"""Storybench dashboard: `streamlit run streamlit_app.py` (or `make run`).

The pages are registered explicitly with st.navigation; the sidebar shows the
store and the worker. The server owns one background worker (ui.services)
that runs queued evaluations, so pages only read and write the store.
"""

from __future__ import annotations

import streamlit as st

from ui import services, widgets

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
    st.Page("app_pages/hardware.py", title="Hardware", icon=":material/memory:"),
]

page = st.navigation(PAGES)

with widgets.guarded("starting the background worker"):
    services.worker()  # one per server process; claims queued evaluations

with st.sidebar:
    widgets.sidebar_status()

with widgets.guarded(f"showing the {page.title} page"):
    page.run()
