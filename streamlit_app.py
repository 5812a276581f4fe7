"""Storybench dashboard: `streamlit run streamlit_app.py` (or `make run`).

The pages are registered explicitly with st.navigation; the sidebar shows the
store and the worker. The server owns one background worker (ui.services)
that runs queued evaluations, so pages only read and write the store.
"""

from __future__ import annotations

import streamlit as st

from ui import services, widgets

st.set_page_config(page_title="Storybench", page_icon=":material/auto_stories:", layout="wide")

PAGES = [
    st.Page("pages/configure.py", title="Configure", icon=":material/tune:", default=True),
    st.Page("pages/run.py", title="Run", icon=":material/play_circle:"),
    st.Page("pages/results.py", title="Results", icon=":material/table_chart:"),
    st.Page("pages/models.py", title="Models", icon=":material/download:"),
    st.Page("pages/hardware.py", title="Hardware", icon=":material/memory:"),
]

page = st.navigation(PAGES)

with widgets.guarded("starting the background worker"):
    services.worker()  # one per server process; claims queued evaluations

with st.sidebar:
    widgets.sidebar_status()

with widgets.guarded(f"showing the {page.title} page"):
    page.run()
