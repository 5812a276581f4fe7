"""Whether this worker runs evaluations on a Ray cluster: STORYBENCH_RAY_ADDRESS, or the secrets file.

Unset (the default): the worker runs every evaluation in its own process (runner.py), and Ray need
not be installed. Set: `host:port` of a running cluster's head (what `ray start --head` prints), or
`auto` for the cluster this machine's `ray start` joined. Also `ray_address = "..."` under
`[storybench]` in `.streamlit/secrets.toml`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..credentials import read_secrets

RAY_ADDRESS_ENV = "STORYBENCH_RAY_ADDRESS"
RAY_INSTALL_HINT = ".venv/bin/pip install -r requirements-ray.txt"


def ray_address(cwd: Path | None = None) -> str | None:
    """The Ray cluster to run evaluations on, or None (this process runs them)."""
    value = os.environ.get(RAY_ADDRESS_ENV, "").strip()
    if value:
        return value
    table = read_secrets(cwd).get("storybench")
    configured = table.get("ray_address") if isinstance(table, dict) else None
    return configured.strip() if isinstance(configured, str) and configured.strip() else None
