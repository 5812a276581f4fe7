"""Streamlit-side helpers shared by the pages: cached services (services.py) and rendering pieces (widgets.py)."""
