"""Who is using this session: sign-in, the session's Principal, and what the sidebar says about it.

The mode comes from Streamlit's own settings (storybench_core.serve decides): no sign-in
configured = a single-user install whose one user is admin (access.LOCAL_ADMIN); an
`[auth]` section = OpenID Connect through st.login; `server.trustedUserHeaders` = an auth
proxy's headers, read by Streamlit into st.user. The role always comes from the
`[storybench.access]` policy on the server, never from anything the browser sends.
Pages hide what `access.allowed` refuses; the core refuses it again (access.require).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st
from streamlit import config as st_config
from streamlit.errors import StreamlitSecretNotFoundError

from storybench_core import access, serve
from storybench_core.access import Principal
from storybench_core.errors import PermissionDenied
from storybench_core.text_safety import safe_inline

_SOURCES: dict[serve.AuthMode, access.Source] = {"oidc": "oidc", "header": "header", "none": "local"}


def secrets() -> Mapping[str, Any]:
    """The server's secrets as Streamlit reads them ({} when there is no secrets file)."""
    try:
        return st.secrets.to_dict()
    except (FileNotFoundError, StreamlitSecretNotFoundError):
        return {}


def server_mode() -> serve.ServerMode:
    """This server's address and sign-in; a ConfigError when it serves others with no sign-in."""
    address = str(st_config.get_option("server.address") or "")
    headers = st_config.get_option("server.trustedUserHeaders")
    auth = serve.auth_mode(secrets(), headers if isinstance(headers, Mapping) else None)
    return serve.check_exposure(address, auth, allow_unauthenticated=serve.allow_unauthenticated())


def _user() -> dict[str, Any]:
    return st.user.to_dict()


def principal() -> Principal:
    """The session's principal; PermissionDenied when nobody is signed in (see `sign_in_gate`)."""
    mode = server_mode()
    if mode.single_user:
        return access.LOCAL_ADMIN
    who = serve.identity_from_user(_user(), mode.auth)
    if who is None:
        raise PermissionDenied("nobody is signed in to this session; sign in first")
    policy = access.load_access_policy(secrets())
    return access.principal_for(who.email, who.name, _SOURCES[mode.auth], policy)


def sign_in_gate() -> Principal:
    """The session's principal, or the sign-in screen and a stop of this run for anyone not signed in."""
    mode = server_mode()
    if mode.single_user:
        return access.LOCAL_ADMIN
    if serve.identity_from_user(_user(), mode.auth) is None:
        _sign_in_screen(mode)
        st.stop()
    return principal()


def _providers() -> list[str | None]:
    """The [auth.NAME] providers, or [None] for the one configured right in [auth]."""
    section = secrets().get("auth") or {}
    named = [name for name, value in section.items() if isinstance(value, Mapping)]
    return named or [None]


def _sign_in_screen(mode: serve.ServerMode) -> None:
    st.title("Storybench")
    if mode.auth == "header":
        st.error(
            "This server takes who you are from its auth proxy, but this request carried no e-mail "
            "header. Open the dashboard through the proxy's address.",
            icon=":material/lock:",
        )
        return
    st.info(
        "This is a team server: sign in to read results, vote and run evaluations.", icon=":material/lock:"
    )
    for provider in _providers():
        label = "Sign in" if provider is None else f"Sign in with {provider}"
        st.button(
            label,
            key=f"auth.login.{provider or ''}",
            type="primary",
            icon=":material/login:",
            on_click=st.login,
            args=() if provider is None else (provider,),
        )


def notice(mode: serve.ServerMode) -> None:
    """The warning on every page of a server others can reach with no sign-in."""
    if mode.exposed_without_sign_in:
        st.warning(
            f"This dashboard listens on {mode.where()} with no sign-in (--allow-unauthenticated): "
            "everyone who can reach it is admin and can run, stop and delete anything. "
            "Configure sign-in (README, Team server).",
            icon=":material/warning:",
        )


def sidebar_identity(mode: serve.ServerMode, me: Principal) -> None:
    """Who is signed in (with sign-out), or that this is a single-user install."""
    if mode.single_user:
        st.caption("Access")
        st.markdown(":orange-badge[single user] no sign-in; whoever opens this page is admin")
        if not mode.loopback:
            st.markdown(f":red-badge[open] listening on {mode.where()}")
        return
    st.caption("Signed in")
    st.markdown(f"**{safe_inline(me.name)}** :violet-badge[{me.role}]")
    st.caption(safe_inline(me.id) + (" · via the auth proxy" if mode.auth == "header" else ""))
    if mode.auth == "oidc":
        st.button("Sign out", key="auth.logout", icon=":material/logout:", on_click=st.logout)
