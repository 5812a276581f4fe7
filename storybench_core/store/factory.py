"""Choose and open the store: MongoDB when a URI is configured, else the SQLite file.

Lookup order for the URI: the argument, env STORYBENCH_MONGODB_URI, then key
`mongodb_uri` in `.streamlit/secrets.toml` of the working directory.
pymongo is imported only when a MongoDB URI is actually used.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from urllib.parse import unquote, urlsplit

from storybench_core import paths
from storybench_core.errors import StoreError
from storybench_core.redact import redact
from storybench_core.store.base import Store

ENV_VAR = "STORYBENCH_MONGODB_URI"
SECRETS_FILE = Path(".streamlit") / "secrets.toml"
SECRETS_KEY = "mongodb_uri"
DEFAULT_DB_NAME = "storybench"


def configured_uri(cwd: Path | None = None) -> str | None:
    """The MongoDB URI from the environment or the Streamlit secrets file, or None."""
    uri = os.environ.get(ENV_VAR, "").strip()
    if uri:
        return uri
    secrets = (cwd or Path.cwd()) / SECRETS_FILE
    if not secrets.is_file():
        return None
    try:
        data = tomllib.loads(secrets.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise StoreError(f"cannot read {secrets}: {exc}. Fix the TOML, or set {ENV_VAR} instead.") from exc
    value = data.get(SECRETS_KEY)
    if value is None:
        return None
    if not isinstance(value, str):
        raise StoreError(f"{SECRETS_KEY} in {secrets} must be a string like 'mongodb://host:27017'")
    return value.strip() or None


def _sqlite_file(uri: str) -> Path:
    """'sqlite:///abs/file.db' or 'sqlite:relative.db' → path; 'sqlite://' → the default file."""
    rest = uri[len("sqlite:") :]
    if rest.startswith("//"):
        rest = rest[2:]
    return Path(unquote(rest)).expanduser() if rest else paths.sqlite_path()


def _mongo_db_name(uri: str) -> str:
    """The database named in the URI path (mongodb://host/mydb), else the default."""
    name = unquote(urlsplit(uri).path.lstrip("/"))
    return name or DEFAULT_DB_NAME


def open_store(uri: str | None = None) -> Store:
    """Open the configured store; raises StoreError if it cannot be reached or opened."""
    uri = (uri or "").strip() or configured_uri()
    if not uri:
        from storybench_core.store.sqlite import SQLiteStore

        return SQLiteStore(paths.sqlite_path())
    scheme = uri.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from storybench_core.store.sqlite import SQLiteStore

        return SQLiteStore(_sqlite_file(uri))
    if scheme in ("mongodb", "mongodb+srv"):
        from storybench_core.store.mongo import MongoStore

        return MongoStore(uri, _mongo_db_name(uri))
    raise StoreError(
        f"unknown store URI {redact(uri)}: use mongodb://..., mongodb+srv://... or sqlite:///path "
        f"(check {ENV_VAR})"
    )
