"""Where Storybench keeps its files: STORYBENCH_HOME (default ~/.storybench)."""

from __future__ import annotations

import os
from pathlib import Path

MODEL_DIRS_ENV = "STORYBENCH_MODEL_DIRS"


def _home_path() -> Path:
    return Path(os.environ.get("STORYBENCH_HOME") or Path.home() / ".storybench").expanduser()


def _ensure_dir(path: Path) -> Path:
    """Create a data folder, or a StoreError that names it and says how to fix it (no traceback)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from .errors import StoreError

        raise StoreError(
            f"cannot create the folder {path}: {exc.strerror or exc} — STORYBENCH_HOME ({_home_path()}) "
            "must be a folder Storybench can write; fix its permissions or point STORYBENCH_HOME elsewhere"
        ) from None
    return path


def storybench_home() -> Path:
    """The data folder; created on first use."""
    return _ensure_dir(_home_path())


def models_dir() -> Path:
    return _ensure_dir(storybench_home() / "models")


def allowed_model_dirs() -> list[Path]:
    """Folders a `path` model may be read from: STORYBENCH_HOME/models and what the operator lists.

    The operator lists folders in STORYBENCH_MODEL_DIRS (separated by the OS path
    separator, `:` on Linux) or as `model_dirs = [...]` under `[storybench]` in
    `.streamlit/secrets.toml`.
    """
    from .credentials import read_secrets

    listed = [part for part in os.environ.get(MODEL_DIRS_ENV, "").split(os.pathsep) if part.strip()]
    table = read_secrets().get("storybench")
    from_secrets = table.get("model_dirs") if isinstance(table, dict) else None
    if isinstance(from_secrets, list):
        listed += [p for p in from_secrets if isinstance(p, str) and p.strip()]
    dirs = [_home_path() / "models", *(Path(p.strip()) for p in listed)]
    return [d.expanduser().resolve() for d in dirs]


def confine_model_path(raw: str) -> Path:
    """The resolved path of a `path` model, or a ConfigError when it is outside every allowed folder.

    The refusal depends only on where the path points, never on whether a file is
    there or what it holds, so it tells a visitor nothing about the server's files.
    """
    from .errors import ConfigError

    allowed = allowed_model_dirs()
    try:
        target: Path | None = Path(raw).expanduser().resolve()
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop: refused like any outsider
        target = None
    if target is not None and any(target != d and target.is_relative_to(d) for d in allowed):
        return target
    raise ConfigError(
        f"path '{raw}' is outside the model folders ({', '.join(str(d) for d in allowed)}) — put the "
        f".gguf file in {allowed[0]}, or ask the operator to add its folder to {MODEL_DIRS_ENV} "
        "(or to model_dirs under [storybench] in .streamlit/secrets.toml)"
    )


def sqlite_path() -> Path:
    return storybench_home() / "storybench.db"


def catalog_override_dir() -> Path:
    """User overrides for sequences and rubric: STORYBENCH_HOME/catalog."""
    return storybench_home() / "catalog"


def configs_dir() -> Path:
    return _ensure_dir(storybench_home() / "configs")


def log_path() -> Path:
    return _ensure_dir(storybench_home() / "logs") / "storybench.log"
