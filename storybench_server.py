"""The Storybench server: `make run` and `storybench serve` start it (`streamlit run storybench_server.py`).

The dashboard (streamlit_app.py) as an ASGI app whose lifespan (ui/server.py) checks
who may reach it and starts the worker with the server, not with the first session.
`streamlit run streamlit_app.py` still works; its worker starts with the first session.
"""

import streamlit as st

from ui.server import lifespan

app = st.App("streamlit_app.py", lifespan=lifespan)
