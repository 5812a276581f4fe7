"""The safe-default rule: who may reach the dashboard, and `storybench serve` applying it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from storybench_core import cli, serve
from storybench_core.errors import ConfigError, PermissionDenied

ROOT = Path(__file__).resolve().parents[1]
OIDC = {
    "redirect_uri": "https://bench.example.com/oauth2callback",
    "cookie_secret": "a long random string",
    "client_id": "storybench",
    "client_secret": "s3cret",
    "server_metadata_url": "https://idp.example.com/.well-known/openid-configuration",
}


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.1.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("unix:///run/storybench.sock", True),
        ("", False),  # Streamlit binds every interface
        (None, False),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("bench.example.com", False),
    ],
)
def test_loopback_addresses(address: str | None, loopback: bool) -> None:
    assert serve.is_loopback(address) is loopback


def test_the_default_server_address_is_loopback() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert serve.is_loopback(config["server"]["address"])  # `streamlit run` and `make run`
    assert serve.is_loopback(serve.DEFAULT_ADDRESS)  # `storybench serve` without --address
    assert cli.build_parser().parse_args(["serve"]).address is None


def test_no_sign_in_on_loopback_is_a_single_user_install() -> None:
    mode = serve.check_exposure("127.0.0.1", "none", allow_unauthenticated=False)
    assert mode.single_user and mode.loopback and not mode.exposed_without_sign_in


@pytest.mark.parametrize("address", ["0.0.0.0", "", "10.0.0.5"])
def test_another_address_without_sign_in_is_refused(address: str) -> None:
    with pytest.raises(ConfigError, match="refusing to serve .* without sign-in.*--allow-unauthenticated"):
        serve.check_exposure(address, "none", allow_unauthenticated=False)


def test_the_explicit_flag_serves_anyway_and_says_so() -> None:
    mode = serve.check_exposure("0.0.0.0", "none", allow_unauthenticated=True)
    assert mode.exposed_without_sign_in


@pytest.mark.parametrize("auth", ["oidc", "header"])
def test_with_sign_in_any_address_serves(auth: serve.AuthMode) -> None:
    mode = serve.check_exposure("0.0.0.0", auth, allow_unauthenticated=False)
    assert not mode.single_user and not mode.exposed_without_sign_in


def test_allow_unauthenticated_reads_its_variable() -> None:
    assert serve.allow_unauthenticated({serve.ALLOW_UNAUTHENTICATED_ENV: "1"})
    assert not serve.allow_unauthenticated({serve.ALLOW_UNAUTHENTICATED_ENV: "0"})
    assert not serve.allow_unauthenticated({})


# --- which sign-in ---------------------------------------------------------------------------


def test_auth_modes() -> None:
    assert serve.auth_mode({}, {}) == "none"
    assert serve.auth_mode({"auth": OIDC}, None) == "oidc"
    shared = {k: OIDC[k] for k in ("redirect_uri", "cookie_secret")}
    provider = {k: OIDC[k] for k in ("client_id", "client_secret", "server_metadata_url")}
    assert serve.auth_mode({"auth": shared | {"google": provider}}, {}) == "oidc"
    # The proxy's headers come with every connection, so they win over a cookie.
    assert serve.auth_mode({"auth": OIDC}, {"X-Forwarded-Email": "email"}) == "header"


def test_an_incomplete_auth_section_says_what_is_missing() -> None:
    with pytest.raises(
        ConfigError, match="lacks cookie_secret, client_id, client_secret, server_metadata_url"
    ):
        serve.auth_mode({"auth": {"redirect_uri": "https://x/oauth2callback"}}, {})


def test_trusted_headers_must_name_the_email() -> None:
    with pytest.raises(ConfigError, match="maps no header to 'email'"):
        serve.auth_mode({}, {"X-Forwarded-User": "name"})


def test_trusted_headers_from_the_environment_win_over_the_file() -> None:
    config = {"server": {"trustedUserHeaders": {"X-File": "email"}}}
    assert serve.configured_trusted_headers(config, {}) == {"X-File": "email"}
    env = {serve.TRUSTED_HEADERS_ENV: '{"X-Env": "email"}'}
    assert serve.configured_trusted_headers(config, env) == {"X-Env": "email"}
    with pytest.raises(ConfigError, match="not a JSON object"):
        serve.configured_trusted_headers({}, {serve.TRUSTED_HEADERS_ENV: "X-Env=email"})


def _write(folder: Path, name: str, text: str) -> None:
    (folder / ".streamlit").mkdir(exist_ok=True)
    (folder / ".streamlit" / name).write_text(text)


def test_plan_serve_reads_the_folders_settings(tmp_path: Path) -> None:
    assert serve.plan_serve(None, cwd=tmp_path, allow_unauthenticated=False, env={}).address == "127.0.0.1"
    with pytest.raises(ConfigError, match="refusing"):
        serve.plan_serve("0.0.0.0", cwd=tmp_path, allow_unauthenticated=False, env={})
    _write(tmp_path, "config.toml", '[server]\ntrustedUserHeaders = { "X-Forwarded-Email" = "email" }\n')
    assert serve.plan_serve("0.0.0.0", cwd=tmp_path, allow_unauthenticated=False, env={}).auth == "header"
    _write(tmp_path, "config.toml", "")
    _write(tmp_path, "secrets.toml", "[auth]\n" + "".join(f'{k} = "{v}"\n' for k, v in OIDC.items()))
    assert serve.plan_serve("0.0.0.0", cwd=tmp_path, allow_unauthenticated=False, env={}).auth == "oidc"


# --- who is signed in -------------------------------------------------------------------------


def test_identity_from_an_oidc_user() -> None:
    assert serve.identity_from_user({"is_logged_in": False}, "oidc") is None
    who = serve.identity_from_user({"is_logged_in": True, "email": "Ana@Example.com", "name": "Ana"}, "oidc")
    assert who == serve.Identity(email="Ana@Example.com", name="Ana")
    nameless = serve.identity_from_user({"is_logged_in": True, "email": "bo@example.com"}, "oidc")
    assert nameless is not None and nameless.name == "bo@example.com"


def test_an_oidc_user_without_a_verified_email_is_refused() -> None:
    with pytest.raises(PermissionDenied, match="no e-mail address.*'email' scope"):
        serve.identity_from_user({"is_logged_in": True, "sub": "123"}, "oidc")
    with pytest.raises(PermissionDenied, match="not verified"):
        serve.identity_from_user({"is_logged_in": True, "email": "x@y.z", "email_verified": False}, "oidc")
    with pytest.raises(PermissionDenied, match="not an e-mail address"):
        serve.identity_from_user({"is_logged_in": True, "email": "just a name"}, "oidc")


def test_identity_from_proxy_headers() -> None:
    who = serve.identity_from_user({"email": "cy@example.com", "name": "Cy"}, "header")
    assert who == serve.Identity(email="cy@example.com", name="Cy")
    assert serve.identity_from_user({"email": None}, "header") is None  # not through the proxy
    assert serve.identity_from_user({"email": "cy@example.com"}, "none") is None


# --- storybench serve -------------------------------------------------------------------------


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, str]]]:
    """What `storybench serve` would exec, instead of starting a server; no secrets file read."""
    calls: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(cli.os, "execve", lambda path, argv, env: calls.append((list(argv), dict(env))))
    monkeypatch.setattr(cli.os, "chdir", lambda path: None)
    monkeypatch.setattr("storybench_core.credentials.read_secrets", lambda cwd=None: {})
    monkeypatch.delenv(serve.ALLOW_UNAUTHENTICATED_ENV, raising=False)
    monkeypatch.delenv(serve.TRUSTED_HEADERS_ENV, raising=False)
    return calls


def _flag(argv: list[str], name: str) -> Any:
    return argv[argv.index(name) + 1]


def test_serve_starts_the_server_on_loopback_by_default(execs: list) -> None:
    cli.main(["serve", "--port", "8600"])
    [(argv, env)] = execs
    assert argv[1:4] == ["-m", "streamlit", "run"] and argv[4].endswith("storybench_server.py")
    assert _flag(argv, "--server.address") == "127.0.0.1"
    assert _flag(argv, "--server.port") == "8600"
    assert serve.ALLOW_UNAUTHENTICATED_ENV not in env


def test_serve_refuses_another_address_without_sign_in(execs: list, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["serve", "--address", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: refusing to serve on 0.0.0.0 without sign-in")
    assert execs == []


def test_serve_with_the_flag_serves_and_warns(execs: list, capsys: pytest.CaptureFixture) -> None:
    cli.main(["serve", "--address", "0.0.0.0", "--allow-unauthenticated"])
    [(argv, env)] = execs
    assert _flag(argv, "--server.address") == "0.0.0.0"
    assert env[serve.ALLOW_UNAUTHENTICATED_ENV] == "1"  # so every page warns
    assert "every visitor is admin" in capsys.readouterr().err
