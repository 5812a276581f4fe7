"""Sign-in and roles as each kind of user sees them: st.user (OIDC or an auth proxy's headers) → Principal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamlit.testing.v1 import AppTest

from storybench_core import serve

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
OIDC = {
    "redirect_uri": "http://127.0.0.1:8501/oauth2callback",
    "cookie_secret": "a long random test secret",
    "client_id": "storybench",
    "client_secret": "s3cret",
    "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration",
}
POLICY = {"access": {"operators": ["@ops.example.com"], "admins": ["ad@example.com"]}}
VIEWER = {"is_logged_in": True, "email": "vi@example.com", "name": "Vi Ewer"}
OPERATOR = {"is_logged_in": True, "email": "Op@Ops.Example.com", "name": "Op Erator"}


def session(user: dict[str, Any], page: str | None = None, auth: dict | None = None) -> AppTest:
    """A new session with sign-in configured, as this user."""
    at = AppTest.from_file(APP, default_timeout=30)
    at.secrets["auth"] = OIDC if auth is None else auth
    at.secrets["storybench"] = POLICY
    at.user = user
    at.run()
    if page is not None:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def labels(at: AppTest) -> list[str]:
    return [b.label for b in at.button]


def sidebar_text(at: AppTest) -> str:
    return " ".join(str(e.value) for e in [*at.sidebar.markdown, *at.sidebar.caption])


def test_without_sign_in_the_sidebar_says_single_user(ui: Any) -> None:
    at = ui.open_app()
    assert "single user" in sidebar_text(at)
    assert "Sign out" not in labels(at)


def test_everyone_signs_in_first(ui: Any) -> None:
    at = session({"is_logged_in": False})
    assert [t.value for t in at.title] == ["Storybench"]
    assert "Sign in" in labels(at)
    assert "Queue run" not in labels(at) and "Check" not in labels(at)  # no page ran


def test_each_named_provider_gets_a_button(ui: Any) -> None:
    shared = {k: OIDC[k] for k in ("redirect_uri", "cookie_secret")}
    provider = {k: OIDC[k] for k in ("client_id", "client_secret", "server_metadata_url")}
    at = session({"is_logged_in": False}, auth=shared | {"google": provider, "okta": provider})
    assert {"Sign in with google", "Sign in with okta"} <= set(labels(at))


def test_an_incomplete_auth_section_serves_nothing_and_says_why(ui: Any) -> None:
    at = session({"is_logged_in": False}, auth={"redirect_uri": OIDC["redirect_uri"]})
    assert any("lacks cookie_secret" in e.value for e in at.error)
    assert "Sign in" not in labels(at)


def test_the_sidebar_names_who_is_signed_in_with_sign_out(ui: Any) -> None:
    at = session(VIEWER)
    text = sidebar_text(at)
    assert "Vi Ewer" in text and "viewer" in text and "vi&#64;example.com" in text  # @ kept inert
    at.sidebar.button(key="auth.logout").click().run()
    assert "Sign in" in labels(at)  # signed out: back to the sign-in screen


def test_a_viewer_sees_no_queue_save_or_stop(ui: Any, store: Any) -> None:
    ui.run_evaluation(store, ui.fake_config("finished run"))
    at = session(VIEWER, "app_pages/configure.py")
    assert "Queue run" not in labels(at) and not any(b.startswith("Save as") for b in labels(at))
    assert any("need the operator role; you are a viewer" in c.value for c in at.caption)
    at.switch_page("app_pages/run.py").run()
    assert not {"Queue run", "Stop", "Resume", "Reset", "Archive"} & set(labels(at))
    at.switch_page("app_pages/models.py").run()
    assert "Download" not in labels(at) and "List GGUF files" not in labels(at)


def test_an_operator_sees_queue_and_stop(ui: Any, store: Any) -> None:
    ui.run_evaluation(store, ui.fake_config("finished run"))
    at = session(OPERATOR, "app_pages/configure.py")
    assert "Queue run" in labels(at)
    assert "operator" in sidebar_text(at)
    at.switch_page("app_pages/run.py").run()
    assert {"Stop", "Resume", "Reset"} <= set(labels(at))
    assert "Archive" not in labels(at)  # admins only


def test_an_operator_queues_as_themselves(ui: Any, store: Any) -> None:
    from storybench_core import audit

    at = session(OPERATOR, "app_pages/configure.py")
    ui.button(at, "Queue run").click().run()
    assert not at.exception
    [entry] = audit.entries(store, action="queue")
    assert (entry.actor, entry.role, entry.source) == ("op@ops.example.com", "operator", "oidc")


def test_proxy_headers_sign_people_in(ui: Any, option: Any) -> None:
    option("server.trustedUserHeaders", {"X-Forwarded-Email": "email", "X-Forwarded-User": "name"})
    at = AppTest.from_file(APP, default_timeout=30)
    at.secrets["storybench"] = POLICY
    at.user = {"email": "cy@ops.example.com", "name": "Cy"}  # what Streamlit read from the headers
    at.run()
    assert not at.exception
    text = sidebar_text(at)
    assert "Cy" in text and "operator" in text and "via the auth proxy" in text
    assert "Sign out" not in labels(at)  # the proxy owns the session


def test_a_request_that_bypassed_the_proxy_gets_no_page(ui: Any, option: Any) -> None:
    option("server.trustedUserHeaders", {"X-Forwarded-Email": "email"})
    at = AppTest.from_file(APP, default_timeout=30)
    at.user = {"email": None}
    at.run()
    assert any("carried no e-mail header" in e.value for e in at.error)
    assert "Queue run" not in labels(at)


def test_an_exposed_server_without_sign_in_refuses_to_serve(ui: Any, option: Any, monkeypatch) -> None:
    monkeypatch.delenv(serve.ALLOW_UNAUTHENTICATED_ENV, raising=False)
    option("server.address", "0.0.0.0")
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert any("refusing to serve on 0.0.0.0 without sign-in" in e.value for e in at.error)
    assert "Queue run" not in labels(at)


def test_the_explicit_flag_warns_on_every_page(ui: Any, option: Any, monkeypatch) -> None:
    monkeypatch.setenv(serve.ALLOW_UNAUTHENTICATED_ENV, "1")
    option("server.address", "0.0.0.0")
    at = ui.open_app()
    for page in ("app_pages/configure.py", "app_pages/run.py", "app_pages/hardware.py"):
        at.switch_page(page).run()
        assert any("everyone who can reach it is admin" in w.value for w in at.warning), page
