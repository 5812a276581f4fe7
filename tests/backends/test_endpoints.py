"""Keys bound to endpoints, and API models kept off private addresses unless the operator allows them."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from storybench_core import credentials
from storybench_core.backends import endpoints
from storybench_core.backends.base import GenerationSettings
from storybench_core.backends.openai_compat import NO_KEY, OpenAIBackend, RetryPolicy
from storybench_core.backends.presets import spec_from_preset
from storybench_core.config import GenerationSettingsConfig, ModelSpec, parse_config
from storybench_core.errors import ApiError, AuthError, ConfigError

from .openai_servers import ENDPOINTS_ENV, Reply, ScriptedOpenAIServer, allow_endpoint

MESSAGES = [{"role": "user", "content": "Write a story."}]
ONE_TRY = RetryPolicy(max_retries=0)
# Every variable a config could try to have sent as a key.
PLANTED = {
    "HF_TOKEN": "hf_plantedhubtoken0123456789abcdefgh",
    "STORYBENCH_MONGODB_URI": "mongodb://ann:planted-db-pass@127.0.0.1:9/db",
    "AWS_SECRET_ACCESS_KEY": "planted-aws-secret-0123456789",
    "OPENAI_API_KEY": "sk-planted-openai-0123456789abcdef",
    "DEEPINFRA_API_KEY": "planted-deepinfra-0123456789",
}


@pytest.fixture(autouse=True)
def _clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in (ENDPOINTS_ENV, "STORYBENCH_LOCAL_PRESETS", *PLANTED):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as srv:
        yield srv


def backend(spec: ModelSpec) -> OpenAIBackend:
    return OpenAIBackend(spec, GenerationSettingsConfig(), retry=ONE_TRY)


def sent_keys(server: ScriptedOpenAIServer) -> list[str]:
    return [r.headers.get("authorization", "") for r in server.requests]


# --- private targets ------------------------------------------------------------------


def test_an_unlisted_loopback_endpoint_is_refused_before_any_request(server: ScriptedOpenAIServer) -> None:
    spec = ModelSpec(kind="api", name="probe", base_url=server.base_url, api_model="m")
    with pytest.raises(
        ApiError, match=r"private, loopback, link-local.*127\.0\.0\.1.*\[storybench\.endpoints\]"
    ):
        backend(spec)
    assert server.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "http://[fd00:ec2::254]/v1",  # AWS metadata over IPv6 (unique local)
        "http://10.0.0.5:8000/v1",
        "http://192.168.1.1/v1",
        "http://100.64.0.1/v1",  # carrier-grade NAT
        "http://0.0.0.0:8080/v1",
        "http://[::1]:8080/v1",
        "http://[::ffff:127.0.0.1]:8080/v1",  # loopback wrapped in IPv6
        "http://localhost:8081/v1",  # (localhost:8080/v1 is the llama.cpp preset's own URL)
    ],
)
def test_private_and_metadata_addresses_are_refused(url: str) -> None:
    with pytest.raises(ApiError, match="may not reach"):
        backend(ModelSpec(kind="api", name="probe", base_url=url, api_model="m"))


def test_every_resolved_address_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def two_answers(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        if host == "mixed.example":
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            ]
        return real(host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", two_answers)
    with pytest.raises(ApiError, match=r"\(127\.0\.0\.1\)"):
        backend(ModelSpec(kind="api", name="probe", base_url="http://mixed.example/v1", api_model="m"))


def test_a_host_that_rebinds_to_loopback_after_the_check_is_refused_at_connect(
    server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter(["93.184.216.34", "127.0.0.1"])  # public when checked, loopback when used

    def rebinding(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers, "127.0.0.1"), port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    spec = ModelSpec(
        kind="api", name="probe", base_url=f"http://rebind.example:{server.port}/v1", api_model="m"
    )
    model = backend(spec)  # the construction-time check saw a public address
    with pytest.raises(ApiError, match="may not reach"):
        model.chat(MESSAGES, GenerationSettings())
    assert server.requests == []  # the transport never connected to the loopback server


def test_an_allowlisted_private_endpoint_works(
    server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    allow_endpoint(monkeypatch, server.base_url)
    done = backend(ModelSpec(kind="api", name="lan", base_url=server.base_url, api_model="m")).chat(
        MESSAGES, GenerationSettings()
    )
    assert done.text == "Once upon a time." and sent_keys(server) == [f"Bearer {NO_KEY}"]


def test_redirects_are_not_followed(server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    allow_endpoint(monkeypatch, server.base_url)
    server.enqueue(Reply.error(307, "moved", headers={"Location": "http://169.254.169.254/latest"}))
    with pytest.raises(ApiError, match="HTTP 307"):
        backend(ModelSpec(kind="api", name="lan", base_url=server.base_url, api_model="m")).chat(
            MESSAGES, GenerationSettings()
        )
    assert len(server.requests) == 1


def test_allowlist_prefixes_match_whole_hosts_ports_and_path_segments() -> None:
    under = credentials.url_under
    assert under("http://127.0.0.1:8080/v1/chat/completions", "http://127.0.0.1:8080/v1")
    assert under("HTTP://LOCALHOST:80/v1", "http://localhost/v1/")
    assert not under("http://127.0.0.1:8080/v1", "http://127.0.0.1:80")
    assert not under("https://api.example.com.evil.net/v1", "https://api.example.com")
    assert not under("http://127.0.0.1:8080/v1evil", "http://127.0.0.1:8080/v1")
    assert not under("https://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1")


def test_local_presets_reach_their_own_url_unless_the_operator_turns_them_off(
    server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    access = endpoints.endpoint_access(spec_from_preset("ollama", "llama3.2"))
    assert access.allows_private("http://localhost:11434/v1/chat/completions")
    monkeypatch.setenv("STORYBENCH_LOCAL_PRESETS", "0")
    assert not endpoints.endpoint_access(spec_from_preset("ollama", "llama3.2")).allows_private(
        "http://localhost:11434/v1"
    )
    # A local preset pointed at another loopback port is not the preset's endpoint any more.
    monkeypatch.delenv("STORYBENCH_LOCAL_PRESETS")
    with pytest.raises(ApiError, match="may not reach"):
        backend(spec_from_preset("ollama", "llama3.2", base_url=server.base_url))


# --- keys bound to endpoints --------------------------------------------------------------


def test_a_preset_key_goes_only_to_the_preset_endpoint(
    server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    allow_endpoint(monkeypatch, server.base_url)  # reachable, but no key bound to it
    moved = spec_from_preset("openai", "gpt-4o-mini", base_url=server.base_url)
    assert moved.api_key_env is None  # replacing base_url drops the preset's key
    backend(moved).chat(MESSAGES, GenerationSettings())
    assert endpoints.endpoint_access(spec_from_preset("openai", "m")).key_env == "OPENAI_API_KEY"
    # Naming the preset's key by hand for another endpoint is refused, not sent.
    with pytest.raises(AuthError, match="api_key_env OPENAI_API_KEY is not allowed for"):
        backend(moved.model_copy(update={"api_key_env": "OPENAI_API_KEY"}))
    assert sent_keys(server) == [f"Bearer {NO_KEY}"]


@pytest.mark.parametrize(
    "name", ["HF_TOKEN", "STORYBENCH_MONGODB_URI", "AWS_SECRET_ACCESS_KEY", "mongodb_uri"]
)
def test_top_level_secrets_are_never_sent_as_keys(
    name: str, server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var, value in PLANTED.items():
        monkeypatch.setenv(var, value)
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text('mongodb_uri = "mongodb://ann:toml-pass@db/x"\n')
    allow_endpoint(monkeypatch, server.base_url)
    spec = ModelSpec(kind="api", name="thief", base_url=server.base_url, api_model="m", api_key_env=name)
    with pytest.raises(AuthError, match=f"api_key_env {name} is not allowed"):
        backend(spec)
    assert server.requests == []


def test_the_allowlist_binds_a_key_and_refuses_reserved_names(
    server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TEAM_VLLM_KEY", "team-key-0123456789")
    (tmp_path / ".streamlit").mkdir()
    secrets = tmp_path / ".streamlit" / "secrets.toml"
    secrets.write_text(f'[storybench.endpoints]\n"{server.base_url}" = "TEAM_VLLM_KEY"\n')
    spec = ModelSpec(kind="api", name="team", base_url=server.base_url, api_model="m")
    backend(spec).chat(MESSAGES, GenerationSettings())
    assert sent_keys(server) == ["Bearer team-key-0123456789"]
    secrets.write_text(f'[storybench.endpoints]\n"{server.base_url}" = "HF_TOKEN"\n')
    with pytest.raises(ConfigError, match="HF_TOKEN is never sent"):
        backend(spec)
    monkeypatch.setenv(ENDPOINTS_ENV, "not json")
    secrets.write_text("")
    with pytest.raises(ConfigError, match="must be JSON"):
        backend(spec)


def test_a_bound_key_that_is_missing_says_which_variable(
    server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENDPOINTS_ENV, json.dumps({server.base_url: "TEAM_VLLM_KEY"}))
    monkeypatch.delenv("TEAM_VLLM_KEY", raising=False)
    with pytest.raises(AuthError, match="set the environment variable TEAM_VLLM_KEY"):
        backend(ModelSpec(kind="api", name="team", base_url=server.base_url, api_model="m"))


def test_credentials_in_base_url_are_refused_without_echoing_them() -> None:
    for url in ("http://ann:hunter2secret@api.example.com/v1", "https://api.example.com/v1?api_key=sk-x"):
        config = {"models": [{"kind": "api", "base_url": url, "api_model": "m"}], "sequences": ["film"]}
        with pytest.raises(ConfigError, match="must not hold credentials") as info:
            parse_config(config)
        assert "hunter2secret" not in str(info.value) and "sk-x" not in str(info.value)


def test_key_status_shows_only_set_or_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED["OPENAI_API_KEY"])
    assert endpoints.key_status(spec_from_preset("openai", "m")) == "OPENAI_API_KEY: set"
    assert endpoints.key_status(spec_from_preset("openrouter", "m")) == "OPENROUTER_API_KEY: not set"
    assert endpoints.key_status(spec_from_preset("ollama", "m")) == "no key needed"
    probe = ModelSpec(kind="api", base_url="https://x.example/v1", api_model="m", api_key_env="HF_TOKEN")
    assert endpoints.key_status(probe) == "HF_TOKEN: not allowed for this endpoint"
