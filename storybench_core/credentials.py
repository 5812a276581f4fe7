"""Where secrets live and which endpoint may receive which key.

Secrets come from the environment and from `.streamlit/secrets.toml` in the
working directory (`[api_keys]` for API keys, `mongodb_uri` for the store). An
API key goes only to an endpoint it is bound to: a preset's key to that
preset's own base_url, any other key only as the operator allowlists it:

    [storybench.endpoints]                          # .streamlit/secrets.toml
    "http://10.0.0.5:8000/v1" = "VLLM_API_KEY"      # this endpoint gets this key
    "http://127.0.0.1:8080/v1" = ""                 # a private address, no key

or the same mapping as JSON in $STORYBENCH_API_ENDPOINTS. A listed endpoint may
be private (loopback, LAN); an endpoint nobody listed must resolve to public
addresses only. The hub token and the store URI are never keys.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import ConfigError

SECRETS_FILE = Path(".streamlit") / "secrets.toml"
ENDPOINTS_ENV = "STORYBENCH_API_ENDPOINTS"
ENDPOINTS_TABLE = "[storybench.endpoints]"
# Never sent to an API endpoint, whatever a config or an allowlist says.
RESERVED_NAMES = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "STORYBENCH_MONGODB_URI"})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Environment variables whose values are treated as secrets by their name alone.
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASS|CREDENTIALS?)$", re.I)
# Environment variables whose URL values may hold a password (MONGODB_URI, DATABASE_URL, …).
_URL_NAME = re.compile(r"(URI|URL|DSN|ENDPOINT|HOST)S?$", re.I)
# Query-string parameters whose values are secrets (?api_key=…, &sig=…).
SECRET_PARAM = re.compile(r"key|token|secret|passw|pwd|sig|credential", re.I)

_cache: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}


def secrets_path(cwd: Path | None = None) -> Path:
    return (cwd or Path.cwd()) / SECRETS_FILE


def read_secrets(cwd: Path | None = None) -> dict[str, Any]:
    """The parsed secrets file ({} when absent or unreadable), re-read when it changes."""
    path = secrets_path(cwd)
    try:
        stat = path.stat()
    except OSError:
        return {}
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _cache.get(str(path))
    if cached and cached[0] == stamp:
        return cached[1]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        # No message: a parse error could quote a line holding a secret. Nothing here logs,
        # because the log formatter itself asks this module for the secrets.
        data = {}
    _cache[str(path)] = (stamp, data)
    return data


# --- endpoints and their keys ------------------------------------------------------------


def normalize_url(url: str) -> str:
    """scheme://host[:port]/path in lower-case scheme and host, default port and trailing '/' dropped."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(scheme)
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def url_under(url: str, prefix: str) -> bool:
    """True when url is prefix or lies below it (path-segment boundary; scheme, host and port equal)."""
    url, prefix = normalize_url(url), normalize_url(prefix)
    return url == prefix or url.startswith(prefix + "/")


@dataclass(frozen=True)
class EndpointRule:
    """One allowlisted endpoint prefix and the variable holding its key (None: no key)."""

    prefix: str
    key_env: str | None
    source: str


def _parse_rules(mapping: Any, source: str) -> tuple[list[EndpointRule], list[str]]:
    rules: list[EndpointRule] = []
    problems: list[str] = []
    if not isinstance(mapping, dict):
        return rules, [f"{source} must map endpoint URLs to variable names"]
    for prefix, env in mapping.items():
        env = (env or "").strip() if isinstance(env, str) or env is None else env
        if not isinstance(prefix, str) or not re.match(r"^https?://[^/?#@\s]+", prefix):
            problems.append(f"{source}: '{prefix}' is not an http(s) URL without credentials")
        elif "?" in prefix or "#" in prefix:
            problems.append(f"{source}: '{prefix}' must not have a query string or fragment")
        elif not isinstance(env, str) or (env and not _ENV_NAME.match(env)):
            problems.append(f"{source}: the value for '{prefix}' must be a variable NAME or \"\"")
        elif env in RESERVED_NAMES:
            problems.append(f"{source}: {env} is never sent to an API endpoint; use a key of its own")
        else:
            rules.append(EndpointRule(normalize_url(prefix), env or None, source))
    return rules, problems


def _all_rules(cwd: Path | None = None) -> tuple[list[EndpointRule], list[str]]:
    table = (read_secrets(cwd).get("storybench") or {}).get("endpoints")
    rules, problems = _parse_rules(table, f"{ENDPOINTS_TABLE} in {SECRETS_FILE}") if table else ([], [])
    raw = os.environ.get(ENDPOINTS_ENV, "").strip()
    if raw:
        try:
            more, bad = _parse_rules(json.loads(raw), f"${ENDPOINTS_ENV}")
        except json.JSONDecodeError:
            more, bad = [], [f'${ENDPOINTS_ENV} must be JSON like {{"http://10.0.0.5:8000/v1": "KEY_VAR"}}']
        rules, problems = rules + more, problems + bad
    return rules, problems


def endpoint_rules(cwd: Path | None = None) -> list[EndpointRule]:
    """The operator's allowlist; a ConfigError naming every bad entry."""
    rules, problems = _all_rules(cwd)
    if problems:
        raise ConfigError("invalid endpoint allowlist:\n  " + "\n  ".join(problems))
    return rules


def rule_for(url: str, cwd: Path | None = None) -> EndpointRule | None:
    """The longest allowlisted prefix that url lies under, if any."""
    matches = [r for r in endpoint_rules(cwd) if url_under(url, r.prefix)]
    return max(matches, key=lambda r: len(r.prefix)) if matches else None


def local_presets_allowed(cwd: Path | None = None) -> bool:
    """Whether the local presets (Ollama, LM Studio, …) may reach their fixed loopback URLs.

    On by default, so a single-user install works; a shared server turns it off with
    `[storybench] local_presets = false` or STORYBENCH_LOCAL_PRESETS=0.
    """
    env = os.environ.get("STORYBENCH_LOCAL_PRESETS", "").strip().lower()
    if env:
        return env not in ("0", "false", "no", "off")
    return (read_secrets(cwd).get("storybench") or {}).get("local_presets", True) is not False


def api_key_value(name: str, cwd: Path | None = None) -> str | None:
    """A key by variable name: the environment, else `[api_keys]` in the secrets file."""
    value = os.environ.get(name)
    if not value or not value.strip():
        section = read_secrets(cwd).get("api_keys")
        value = section.get(name) if isinstance(section, dict) else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def bound_key_names(cwd: Path | None = None) -> set[str]:
    """Every variable name a preset or the allowlist binds to an endpoint."""
    from .backends.preset_catalog import list_presets

    names = {p.api_key_env for p in list_presets() if p.api_key_env}
    names |= {r.key_env for r in _all_rules(cwd)[0] if r.key_env}
    return names


# --- every known secret value, for the redactor -------------------------------------------


def url_secrets(value: str) -> set[str]:
    """The secret parts of a URL: its password (raw and decoded) and secret query values."""
    out: set[str] = set()
    for url in re.findall(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>\[\]]+", value, re.I):
        rest = url.split("://", 1)[1].split("://", 1)[0]
        query_at = rest.find("?")
        at = rest.rfind("@", 0, query_at if query_at >= 0 else len(rest))
        if at >= 0:
            user, _, password = rest[:at].partition(":")
            if password:
                out |= {password, unquote(password)}
            elif len(user) >= 16:  # a token used as the user name (https://TOKEN@host)
                out |= {user, unquote(user)}
        if query_at >= 0:
            query = rest[query_at + 1 :].split("#", 1)[0]
            out |= {v for k, v in parse_qsl(query) if SECRET_PARAM.search(k)}
    return {s for s in out if len(s) >= 3}


def _leaves(data: Any) -> list[str]:
    if isinstance(data, str):
        return [data]
    if isinstance(data, dict):
        return [s for v in data.values() for s in _leaves(v)]
    if isinstance(data, list):
        return [s for v in data for s in _leaves(v)]
    return []


def known_secret_values(cwd: Path | None = None) -> set[str]:
    """Every secret value this process knows of (the redactor masks each one)."""
    found: set[str] = set()
    named = RESERVED_NAMES | bound_key_names(cwd)
    for name, value in os.environ.items():
        value = value.strip()
        if "://" in value:
            if name in named or _SECRET_NAME.search(name) or _URL_NAME.search(name):
                found |= url_secrets(value)
        elif (name in named and len(value) >= 4) or (_SECRET_NAME.search(name) and len(value) >= 8):
            found.add(value)
    data = {k: v for k, v in read_secrets(cwd).items() if k != "storybench"}
    for value in _leaves(data):
        value = value.strip()
        if "://" in value:
            found |= url_secrets(value)
        elif len(value) >= 4:
            found.add(value)
    return found
