"""Who may reach the dashboard, decided before it serves anyone: the safe-default rule.

With no sign-in configured the dashboard is a single-user install whose one user is
admin, so it binds to 127.0.0.1. Binding anywhere else needs sign-in — an `[auth]`
section in `.streamlit/secrets.toml` (OpenID Connect, `st.login`) or an auth proxy's
headers (`server.trustedUserHeaders` in `.streamlit/config.toml`) — or the admin's
explicit `--allow-unauthenticated` (STORYBENCH_ALLOW_UNAUTHENTICATED=1), and then every
page warns. `storybench serve` checks this before it starts Streamlit; the server
checks it again with Streamlit's own settings (`ui/server.py`, `streamlit_app.py`).
`identity_from_user` reads who signed in from st.user's fields (ui/auth.py passes them).
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, PermissionDenied

AuthMode = Literal["oidc", "header", "none"]

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 8501
ALLOW_UNAUTHENTICATED_ENV = "STORYBENCH_ALLOW_UNAUTHENTICATED"
CONFIG_FILE = Path(".streamlit") / "config.toml"
TRUSTED_HEADERS_ENV = "STREAMLIT_SERVER_TRUSTED_USER_HEADERS"
_OIDC_SHARED = ("redirect_uri", "cookie_secret")
_OIDC_PROVIDER = ("client_id", "client_secret", "server_metadata_url")


@dataclass(frozen=True)
class ServerMode:
    """How this server is reached and who its users are."""

    address: str  # "" = every interface (Streamlit's default when none is set)
    auth: AuthMode

    @property
    def loopback(self) -> bool:
        return is_loopback(self.address)

    @property
    def single_user(self) -> bool:
        """No sign-in: whoever opens the dashboard is its one user, an admin."""
        return self.auth == "none"

    @property
    def exposed_without_sign_in(self) -> bool:
        """Reachable from other machines with no sign-in: every visitor is admin (the warning)."""
        return self.single_user and not self.loopback

    def where(self) -> str:
        return self.address or "every interface"


def is_loopback(address: str | None) -> bool:
    """Only this machine can connect: 127.0.0.0/8, ::1, "localhost" or a unix socket."""
    if not address:
        return False  # Streamlit binds every interface when no address is set
    address = address.strip()
    if address.startswith("unix://"):
        return True  # reached through the file system, not the network
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to may change


def allow_unauthenticated(env: Mapping[str, str] | None = None) -> bool:
    value = (os.environ if env is None else env).get(ALLOW_UNAUTHENTICATED_ENV, "")
    return value.strip().lower() in ("1", "true", "yes")


def oidc_configured(secrets: Mapping[str, Any]) -> bool:
    """Whether `[auth]` configures an OpenID Connect sign-in; an incomplete one is a ConfigError."""
    section = secrets.get("auth")
    if not section:
        return False
    if not isinstance(section, Mapping):
        raise ConfigError("[auth] in .streamlit/secrets.toml must be a table (see README, Team server)")
    missing = [key for key in _OIDC_SHARED if not section.get(key)]
    providers = {"": section} | {name: v for name, v in section.items() if isinstance(v, Mapping)}
    complete = [name for name, p in providers.items() if all(p.get(key) for key in _OIDC_PROVIDER)]
    if not complete:
        missing.append(", ".join(_OIDC_PROVIDER) + " (in [auth] or a provider's [auth.NAME])")
    if missing:
        raise ConfigError(
            f"[auth] in .streamlit/secrets.toml lacks {', '.join(missing)}; "
            "fill them in from your identity provider (README, Team server) or remove [auth]"
        )
    return True


def header_configured(trusted_user_headers: Mapping[str, Any] | None) -> bool:
    """Whether an auth proxy's headers name the user; they must give the e-mail (roles use it)."""
    if not trusted_user_headers:
        return False
    if "email" not in trusted_user_headers.values():
        raise ConfigError(
            "server.trustedUserHeaders maps no header to 'email' (.streamlit/config.toml); "
            'map the proxy\'s e-mail header, e.g. { "X-Forwarded-Email" = "email" }'
        )
    return True


def auth_mode(secrets: Mapping[str, Any], trusted_user_headers: Mapping[str, Any] | None) -> AuthMode:
    """The proxy's headers when configured (they arrive with every connection), else OIDC, else none."""
    if header_configured(trusted_user_headers):
        return "header"
    if oidc_configured(secrets):
        return "oidc"
    return "none"


def check_exposure(address: str, auth: AuthMode, *, allow_unauthenticated: bool) -> ServerMode:
    """The server's mode; a ConfigError when it would serve other machines with nobody signing in."""
    mode = ServerMode(address=address, auth=auth)
    if mode.exposed_without_sign_in and not allow_unauthenticated:
        raise ConfigError(
            f"refusing to serve on {mode.where()} without sign-in: every visitor would be admin. "
            "Configure [auth] in .streamlit/secrets.toml or server.trustedUserHeaders "
            f"(README, Team server), serve on {DEFAULT_ADDRESS}, or pass --allow-unauthenticated"
        )
    return mode


# --- who is signed in ----------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """A signed-in person as the identity provider or the auth proxy names them."""

    email: str
    name: str


def identity_from_user(user: Mapping[str, Any], auth: AuthMode) -> Identity | None:
    """The person in st.user's fields, or None when nobody is signed in (yet)."""
    if auth == "none" or (auth == "oidc" and not user.get("is_logged_in")):
        return None
    email = str(user.get("email") or "").strip()
    if not email:
        if auth == "header":
            return None  # a request that did not come through the proxy
        raise PermissionDenied(
            "your identity provider sent no e-mail address, and roles are given by e-mail; "
            "ask the admin to request the 'email' scope ([auth] client_kwargs in secrets.toml)"
        )
    if "@" not in email or any(ch.isspace() for ch in email):
        raise PermissionDenied(f"{email!r} from the {_SOURCE_NAMES[auth]} is not an e-mail address")
    if user.get("email_verified") is False:
        raise PermissionDenied(
            f"{email} is not verified at your identity provider; verify it there, then sign in again"
        )
    name = str(user.get("name") or user.get("preferred_username") or email).strip()
    return Identity(email=email, name=name)


_SOURCE_NAMES: dict[AuthMode, str] = {"oidc": "identity provider", "header": "auth proxy", "none": ""}


# --- the settings files, for `storybench serve` (the server itself asks Streamlit) ----------------


def read_streamlit_config(cwd: Path | None = None) -> dict[str, Any]:
    """`.streamlit/config.toml` of the folder Streamlit runs in ({} when absent)."""
    path = (cwd or Path.cwd()) / CONFIG_FILE
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def configured_trusted_headers(
    config: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """server.trustedUserHeaders as Streamlit would read it: its environment variable, else the file."""
    raw = (os.environ if env is None else env).get(TRUSTED_HEADERS_ENV, "").strip()
    if raw:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{TRUSTED_HEADERS_ENV} is not a JSON object: {exc}") from exc
    else:
        value = (config.get("server") or {}).get("trustedUserHeaders") or {}
    if not isinstance(value, Mapping):
        raise ConfigError("server.trustedUserHeaders must map header names to st.user keys")
    return dict(value)


def plan_serve(
    address: str | None,
    *,
    cwd: Path,
    allow_unauthenticated: bool,
    env: Mapping[str, str] | None = None,
) -> ServerMode:
    """What `storybench serve` may start: the address (default loopback) checked against sign-in."""
    from .credentials import read_secrets

    config = read_streamlit_config(cwd)
    auth = auth_mode(read_secrets(cwd), configured_trusted_headers(config, env))
    return check_exposure(address or DEFAULT_ADDRESS, auth, allow_unauthenticated=allow_unauthenticated)


__all__ = [
    "ALLOW_UNAUTHENTICATED_ENV",
    "DEFAULT_ADDRESS",
    "DEFAULT_PORT",
    "AuthMode",
    "Identity",
    "ServerMode",
    "allow_unauthenticated",
    "auth_mode",
    "check_exposure",
    "configured_trusted_headers",
    "header_configured",
    "identity_from_user",
    "is_loopback",
    "oidc_configured",
    "plan_serve",
    "read_streamlit_config",
]
