"""Plain-data view models for the dashboard: no streamlit in here.

Each page of the Streamlit app asks one of these modules for what to show
(dataclasses, pandas frames, formatted strings) and only lays it out:
`run` (progress, ETA, console, history), `results` (response table, filters,
chart frames), `configure` (form values ↔ config, field errors, named
configs), `hardware` (GPU/CPU/RAM rows) and `models` (cache listing, a
background download tracker).
"""
