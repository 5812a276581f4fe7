"""Where Storybench keeps its files: STORYBENCH_HOME (default ~/.storybench)."""

from __future__ import annotations

import os
from pathlib import Path


def storybench_home() -> Path:
    """The data folder; created on first use."""
    home = Path(os.environ.get("STORYBENCH_HOME") or Path.home() / ".storybench").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def models_dir() -> Path:
    path = storybench_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sqlite_path() -> Path:
    return storybench_home() / "storybench.db"


def catalog_override_dir() -> Path:
    """User overrides for sequences and rubric: STORYBENCH_HOME/catalog."""
    return storybench_home() / "catalog"


def configs_dir() -> Path:
    path = storybench_home() / "configs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_path() -> Path:
    path = storybench_home() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path / "storybench.log"
