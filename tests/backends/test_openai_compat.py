"""OpenAIBackend against a scripted loopback server (fast) and llama-cpp-python's own server (slow)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest

from storybench_core.backends.base import GenerationSettings, ModelBackend
from storybench_core.backends.openai_compat import (
    NO_KEY,
    OpenAIBackend,
    RateLimiter,
    RetryPolicy,
    approx_tokens,
    list_endpoint_models,
    parse_retry_after,
    resolve_api_key,
)
from storybench_core.backends.presets import get_preset, list_presets, spec_from_preset
from storybench_core.backends.registry import create_backend
from storybench_core.config import GenerationSettingsConfig, ModelSpec
from storybench_core.errors import (
    ApiError,
    ApiTimeoutError,
    AuthError,
    ConfigError,
    RateLimitError,
    StopRequested,
)

from .openai_servers import Reply, ScriptedOpenAIServer, allow_endpoint

KEY_ENV = "STORYBENCH_TEST_API_KEY"
SECRET = "sk-test-Zq8vX1secretvalue42"
FAST_RETRY = RetryPolicy(max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05)
MESSAGES = [
    {"role": "system", "content": "You write stories."},
    {"role": "user", "content": "Write about a lighthouse keeper."},
]


@pytest.fixture(autouse=True)
def _no_user_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read a real .streamlit/secrets.toml or a real key."""
    monkeypatch.chdir(tmp_path)
    for name in (KEY_ENV, "OPENAI_API_KEY", "DEEPINFRA_API_KEY", "OPENROUTER_API_KEY", "VLLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as srv:
        allow_endpoint(monkeypatch, f"http://127.0.0.1:{srv.port}")  # loopback: only as the operator allows
        yield srv


def api_spec(server: ScriptedOpenAIServer, **fields: Any) -> ModelSpec:
    return ModelSpec(kind="api", name="test-api", base_url=server.base_url, api_model="story-model", **fields)


def backend_for(spec: ModelSpec, retry: RetryPolicy = FAST_RETRY) -> OpenAIBackend:
    return OpenAIBackend(spec, GenerationSettingsConfig(), retry=retry)


# --- streaming --------------------------------------------------------------------


def test_streams_text_and_records_usage(server: ScriptedOpenAIServer) -> None:
    backend = backend_for(api_spec(server))
    pieces: list[str] = []
    settings = GenerationSettings(temperature=0.3, top_p=0.9, max_tokens=77, seed=1234, stop=("THE END",))

    done = backend.chat(MESSAGES, settings, pieces.append)

    assert isinstance(backend, ModelBackend)
    assert done.text == "Once upon a time." == "".join(pieces)
    assert pieces == ["Once", " upon", " a", " time", "."]
    assert done.finish_reason == "stop"
    assert done.completion_tokens == 5
    assert done.prompt_tokens == 8  # the server's own count (words), not our estimate
    assert "usage_estimated" not in done.extra
    assert done.generation_time_s > 0
    assert done.first_token_s is not None and done.first_token_s <= done.generation_time_s
    assert done.template == "api"
    assert done.extra["attempts"] == 1
    body = server.chat_requests()[0].body
    assert body["model"] == "story-model"
    assert body["messages"] == MESSAGES
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.3, 0.9, 77, 1234)
    assert body["stop"] == ["THE END"]
    assert "response_format" not in body
    backend.close()
    backend.close()  # idempotent


def test_missing_usage_is_estimated_and_marked(server: ScriptedOpenAIServer) -> None:
    server.enqueue(Reply.stream(["a", " b", " c"], usage=False, finish="length"))
    done = backend_for(api_spec(server)).chat(MESSAGES, GenerationSettings())
    assert done.extra["usage_estimated"] is True
    assert done.completion_tokens == 3
    assert done.prompt_tokens == approx_tokens(MESSAGES)
    assert done.finish_reason == "length"


def test_server_rejecting_stream_options_is_resent_without_them(server: ScriptedOpenAIServer) -> None:
    server.enqueue(Reply.error(400, "unknown field: stream_options"))
    done = backend_for(api_spec(server)).chat(MESSAGES, GenerationSettings())
    assert done.text == "Once upon a time."
    assert done.extra["usage_estimated"] is True
    first, second = server.chat_requests()
    assert "stream_options" in first.body and "stream_options" not in second.body


def test_stop_requested_mid_stream_closes_it(server: ScriptedOpenAIServer) -> None:
    server.enqueue(Reply.stream([f" w{i}" for i in range(60)], delay_s=0.03))
    seen: list[str] = []

    def on_token(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 3:
            raise StopRequested()

    with pytest.raises(StopRequested):
        backend_for(api_spec(server)).chat(MESSAGES, GenerationSettings(), on_token)
    assert server.streams_finished == 0  # chat returned without reading the stream to its end
    assert seen == [" w0", " w1", " w2"]
    assert len(server.chat_requests()) == 1  # a stop is not retried
    # The connection was closed: the server's next writes failed, and it never wrote the last event.
    assert server.wait_idle()
    assert server.streams_finished == 0 and server.disconnects == 1


# --- structured output -------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}


def test_json_schema_sent_as_response_format(server: ScriptedOpenAIServer) -> None:
    server.enqueue(Reply.stream(['{"score": ', "4}"]))
    done = backend_for(api_spec(server)).chat(MESSAGES, GenerationSettings(json_schema=SCHEMA))
    assert done.text == '{"score": 4}'
    assert done.extra["structured_output"] == "json_schema"
    assert server.chat_requests()[0].body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "judgement", "schema": SCHEMA, "strict": True},
    }


def test_rejected_json_schema_falls_back_to_json_object(server: ScriptedOpenAIServer) -> None:
    server.enqueue(Reply.error(400, "response_format type json_schema is not supported"))
    backend = backend_for(api_spec(server))
    done = backend.chat(MESSAGES, GenerationSettings(json_schema=SCHEMA))
    assert done.extra["structured_output"] == "json_object"
    assert server.chat_requests()[1].body["response_format"] == {"type": "json_object"}
    backend.chat(MESSAGES, GenerationSettings(json_schema=SCHEMA))  # remembered: no second rejection
    assert len(server.chat_requests()) == 3


# --- retries ----------------------------------------------------------------------


def test_429_waits_for_retry_after(server: ScriptedOpenAIServer, caplog: pytest.LogCaptureFixture) -> None:
    server.enqueue(Reply.error(429, "slow down", {"Retry-After": "1"}))
    waits: list[float] = []
    backend = OpenAIBackend(
        api_spec(server), GenerationSettingsConfig(), retry=FAST_RETRY, sleep=waits.append
    )
    with caplog.at_level(logging.WARNING, logger="storybench_core"):
        done = backend.chat(MESSAGES, GenerationSettings())
    assert waits == [1.0]  # the server's Retry-After, not the policy's 0.01 s backoff
    assert done.text == "Once upon a time."
    assert done.extra["attempts"] == 2 and done.extra["retry_wait_s"] == 1.0
    assert len(server.chat_requests()) == 2
    assert "HTTP 429" in caplog.text and "retry 1 of 3" in caplog.text


def test_5xx_is_retried_then_succeeds(server: ScriptedOpenAIServer) -> None:
    server.enqueue(Reply.error(500, "boom"), Reply.error(503, "busy"))
    done = backend_for(api_spec(server)).chat(MESSAGES, GenerationSettings())
    assert done.text == "Once upon a time."
    assert done.extra["attempts"] == 3


def test_429_after_all_retries_is_rate_limit_error(server: ScriptedOpenAIServer) -> None:
    server.enqueue(*[Reply.error(429, "quota", {"Retry-After": "0"}) for _ in range(4)])
    with pytest.raises(RateLimitError, match="after 4 attempts") as info:
        backend_for(api_spec(server)).chat(MESSAGES, GenerationSettings())
    assert "requests_per_minute" in str(info.value)
    assert len(server.chat_requests()) == 4


def test_retry_after_beyond_the_limit_fails_at_once(server: ScriptedOpenAIServer) -> None:
    server.enqueue(Reply.error(429, "come back tomorrow", {"Retry-After": "86400"}))
    with pytest.raises(RateLimitError):
        backend_for(api_spec(server)).chat(MESSAGES, GenerationSettings())
    assert len(server.chat_requests()) == 1


def test_bad_request_is_not_retried(server: ScriptedOpenAIServer) -> None:
    server.enqueue(Reply.error(400, "messages must not be empty"))
    with pytest.raises(ApiError, match="HTTP 400: messages must not be empty"):
        backend_for(api_spec(server)).chat(MESSAGES, GenerationSettings())
    assert len(server.chat_requests()) == 1


def test_parse_retry_after_forms() -> None:
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    later, earlier = (format_datetime(now + timedelta(seconds=s), usegmt=True) for s in (7, -7))
    assert parse_retry_after({"retry-after": later}, now) == 7
    assert parse_retry_after({"retry-after": earlier}, now) == 0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_backoff_is_exponential_with_full_jitter() -> None:
    policy = RetryPolicy(backoff_base_s=1.0, backoff_max_s=10.0)
    assert [policy.backoff_s(a, lambda: 1.0) for a in range(6)] == [1, 2, 4, 8, 10, 10]
    assert policy.backoff_s(3, lambda: 0.0) == 0.0
    assert RetryPolicy.from_options({"max_retries": "2", "backoff_base_s": 0.5}) == RetryPolicy(2, 0.5)


# --- errors -----------------------------------------------------------------------


def test_401_names_the_variable_never_the_key(
    server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    allow_endpoint(monkeypatch, server.base_url, KEY_ENV)
    # A careless server that echoes the key back.
    server.enqueue(Reply.error(401, f"Incorrect API key provided: {SECRET}"))
    caplog.set_level(logging.DEBUG)
    backend = backend_for(api_spec(server, api_key_env=KEY_ENV))
    with pytest.raises(AuthError) as info:
        backend.chat(MESSAGES, GenerationSettings())
    message = str(info.value)
    assert f"${KEY_ENV}" in message and server.base_url in message and "check it" in message
    assert SECRET not in message
    assert SECRET not in caplog.text
    assert SECRET not in repr(backend)
    assert server.chat_requests()[0].headers["authorization"] == f"Bearer {SECRET}"
    assert len(server.chat_requests()) == 1  # auth failures are not retried


def test_404_model_explains_how_to_list_models(server: ScriptedOpenAIServer) -> None:
    server.enqueue(Reply.error(404, "model 'story-modle' not found"))
    with pytest.raises(ApiError, match="/models") as info:
        backend_for(api_spec(server)).chat(MESSAGES, GenerationSettings())
    assert "'story-model' not found" in str(info.value)


def test_timeout_is_api_timeout_error(server: ScriptedOpenAIServer) -> None:
    # The server stays silent until the test ends: only the client's own timeout can end the call
    # with ApiTimeoutError (60 s is a hang-guard; then the server hangs up, a different error).
    server.enqueue(Reply.hang(60.0))
    with pytest.raises(ApiTimeoutError, match=r"within 0\.3 s"):
        backend_for(api_spec(server, timeout_s=0.3)).chat(MESSAGES, GenerationSettings())
    assert len(server.chat_requests()) == 1  # a timeout is not retried


def test_connection_refused_names_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    allow_endpoint(monkeypatch, url)
    spec = ModelSpec(kind="api", name="nobody", base_url=url, api_model="m")
    with pytest.raises(ApiError, match="cannot connect to") as info:
        backend = backend_for(spec, RetryPolicy(max_retries=1, backoff_base_s=0.01))
        backend.chat(MESSAGES, GenerationSettings())
    assert url in str(info.value) and "after 2 attempts" in str(info.value)


# --- API keys ---------------------------------------------------------------------


def test_missing_key_for_a_keyed_preset_says_which_variable() -> None:
    spec = spec_from_preset("openai", "gpt-4o-mini")
    with pytest.raises(AuthError, match="OPENAI_API_KEY"):
        OpenAIBackend(spec)


def test_key_from_streamlit_secrets_api_keys_only(tmp_path: Path) -> None:
    (tmp_path / ".streamlit").mkdir()
    secrets = tmp_path / ".streamlit" / "secrets.toml"
    table = '[storybench.endpoints]\n"http://127.0.0.1:9/v1" = "' + KEY_ENV + '"\n'
    secrets.write_text(f'[api_keys]\n{KEY_ENV} = "{SECRET}"\n\n{table}')
    spec = ModelSpec(kind="api", base_url="http://127.0.0.1:9/v1", api_model="m", api_key_env=KEY_ENV)
    assert resolve_api_key(spec) == SECRET
    # A top-level value (like mongodb_uri) is never a key.
    secrets.write_text(f'{KEY_ENV} = "top-level-key"\n\n{table}')
    with pytest.raises(AuthError, match=f"set the environment variable {KEY_ENV}"):
        resolve_api_key(spec)


def test_environment_wins_over_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text(f'[api_keys]\n{KEY_ENV} = "from-file"\n')
    monkeypatch.setenv(KEY_ENV, "from-env")
    allow_endpoint(monkeypatch, "http://127.0.0.1:9/v1", KEY_ENV)
    spec = ModelSpec(kind="api", base_url="http://127.0.0.1:9/v1", api_model="m")
    assert resolve_api_key(spec) == "from-env"  # bound by the allowlist, so api_key_env may be left out


def test_local_preset_sends_a_placeholder_key(server: ScriptedOpenAIServer) -> None:
    spec = spec_from_preset("ollama", "llama3.2", base_url=server.base_url)
    backend_for(spec).chat(MESSAGES, GenerationSettings())
    assert server.chat_requests()[0].headers["authorization"] == f"Bearer {NO_KEY}"
    assert resolve_api_key(spec_from_preset("vllm", "m")) == NO_KEY  # optional key, not set


# --- limits -----------------------------------------------------------------------


def test_concurrency_limit_is_per_endpoint_and_process_wide(server: ScriptedOpenAIServer) -> None:
    spec = api_spec(server, max_concurrency=2)
    server.enqueue(*[Reply.stream(["x"] * 4, delay_s=0.04) for _ in range(6)])
    backends = [backend_for(spec) for _ in range(3)]  # several backends, one endpoint
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            backends[i % 3].chat(MESSAGES, GenerationSettings())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert len(server.chat_requests()) == 6
    assert server.max_in_flight == 2


def test_rate_limiter_sliding_window() -> None:
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    limiter = RateLimiter(3, window_s=60.0, clock=lambda: clock[0], sleep=sleep)
    waits = [limiter.acquire() for _ in range(7)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == 60.0  # the 4th waits until the 1st leaves the window
    assert clock[0] == 120.0  # the 7th started a third window


def test_requests_per_minute_is_applied(server: ScriptedOpenAIServer) -> None:
    backend = backend_for(api_spec(server, requests_per_minute=2))
    assert backend._rate is not None and backend._rate.per_window == 2
    backend.chat(MESSAGES, GenerationSettings())
    backend.chat(MESSAGES, GenerationSettings())
    assert len(server.chat_requests()) == 2


# --- presets, registry, list_models -------------------------------------------------


def test_presets() -> None:
    ids = [p.id for p in list_presets()]
    assert ids == ["openai", "deepinfra", "openrouter", "ollama", "lmstudio", "llamacpp-server", "vllm"]
    assert get_preset("deepinfra").base_url == "https://api.deepinfra.com/v1/openai"
    assert get_preset("openrouter").api_key_env == "OPENROUTER_API_KEY"
    assert not get_preset("lmstudio").needs_key and get_preset("lmstudio").api_key_env is None
    assert get_preset("vllm").api_key_env == "VLLM_API_KEY" and not get_preset("vllm").needs_key
    with pytest.raises(ConfigError, match="known presets"):
        get_preset("nope")
    spec = spec_from_preset("openrouter", "mistralai/mistral-small", name="mistral", max_concurrency=1)
    assert (spec.kind, spec.preset, spec.base_url) == ("api", "openrouter", "https://openrouter.ai/api/v1")
    assert (spec.api_key_env, spec.max_concurrency, spec.display_name) == ("OPENROUTER_API_KEY", 1, "mistral")


def test_registry_builds_the_api_backend(server: ScriptedOpenAIServer) -> None:
    spec = api_spec(server, options={"n_ctx": 8192})
    backend = create_backend(spec, GenerationSettingsConfig())
    assert isinstance(backend, OpenAIBackend)
    assert backend.name == "test-api"
    assert backend.context_size() == 8192
    assert backend.supports_batch is True  # chat_batch sends the runs concurrently
    assert backend.count_tokens(MESSAGES) == approx_tokens(MESSAGES) > 0
    assert backend_for(api_spec(server)).context_size() == GenerationSettingsConfig().n_ctx


def test_list_endpoint_models(server: ScriptedOpenAIServer) -> None:
    assert list_endpoint_models(api_spec(server)) == ["judge-model", "story-model"]


def test_list_models_wrong_base_url(server: ScriptedOpenAIServer) -> None:
    spec = ModelSpec(kind="api", base_url=server.base_url.removesuffix("/v1") + "/nowhere", api_model="m")
    with pytest.raises(ApiError, match="check base_url"):
        list_endpoint_models(spec)


# --- slow: llama-cpp-python's own OpenAI-compatible server ---------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_llama_cpp_server_two_turn_chat(
    bundled_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2-turn chat through OpenAIBackend with `python -m llama_cpp.server` serving the bundled model.

    The bundled Gemma 3 270M base has no chat template. The server's own
    fallback (llama-2 [INST] format) makes it answer with an immediate end of
    text, so the server is started with --chat_format gemma (Gemma's turn
    markers). llama-cpp-python 0.3.36 ignores stream_options.include_usage, so
    streamed token counts are estimated (extra["usage_estimated"]).
    """
    port = _free_port()
    log_path = tmp_path / "llama-server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_model),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--chat_format", "gemma",
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        allow_endpoint(monkeypatch, base_url)  # a loopback server: the operator lists it
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"llama_cpp.server did not start:\n{tail}")
            time.sleep(0.5)

        spec = spec_from_preset("llamacpp-server", "bundled", base_url=base_url, timeout_s=120)
        backend = OpenAIBackend(spec, GenerationSettingsConfig(n_ctx=2048))
        settings = GenerationSettings(temperature=0.7, max_tokens=24, seed=7)
        messages = [{"role": "user", "content": "Write the first line of a story about a lighthouse."}]
        first = backend.chat(messages, settings)
        messages += [
            {"role": "assistant", "content": first.text},
            {"role": "user", "content": "Continue the story."},
        ]
        pieces: list[str] = []
        second = backend.chat(messages, settings, pieces.append)
        backend.close()

        for done in (first, second):
            assert done.text.strip()
            assert done.completion_tokens > 0 and done.prompt_tokens > 0
            assert done.finish_reason in ("stop", "length")
        assert "".join(pieces) == second.text
        assert second.prompt_tokens > first.prompt_tokens
        assert second.first_token_s is not None
        print(f"\nllama_cpp.server (--chat_format gemma): {first.text!r} / {second.text!r}; {second.extra}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# --- endpoints that never stop ---------------------------------------------------------------


def test_an_endpoint_ignoring_max_tokens_is_cut_at_the_budget(server: ScriptedOpenAIServer) -> None:
    server.enqueue(Reply.stream([" word"] * 5000, usage=False, finish=None))
    pieces: list[str] = []
    done = backend_for(api_spec(server)).chat(MESSAGES, GenerationSettings(max_tokens=10), pieces.append)
    assert done.text == " word" * 10 == "".join(pieces)
    assert done.finish_reason == "length" and done.extra["client_cap"] == "tokens"
    assert done.completion_tokens == 10


def test_a_huge_piece_is_cut_at_the_byte_cap(server: ScriptedOpenAIServer) -> None:
    server.enqueue(Reply.stream(["é" * 50_000, "more"], usage=False))
    done = backend_for(api_spec(server)).chat(MESSAGES, GenerationSettings(max_tokens=20))
    assert len(done.text.encode("utf-8")) <= 4096 and done.text == "é" * 2048  # never half a character
    assert done.finish_reason == "length" and done.extra["client_cap"] == "bytes"


def test_the_transport_cuts_a_body_at_its_byte_cap() -> None:
    from storybench_core.backends.api_http import CappedStream

    class Body(httpx2.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            while True:
                yield b"x" * 1000

    capped = CappedStream(Body(), cap=2500)
    assert b"".join(capped) == b"x" * 2500 and capped.truncated


def test_a_body_past_the_transport_cap_ends_as_length(
    server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storybench_core.backends import api_http

    monkeypatch.setattr(api_http, "MAX_RESPONSE_BYTES", 3000)
    server.enqueue(Reply.stream(["x" * 100] * 100, usage=False))
    done = backend_for(api_spec(server)).chat(MESSAGES, GenerationSettings(max_tokens=1000))
    assert 0 < len(done.text) < 3000
    assert done.finish_reason == "length" and done.extra["client_cap"] == "bytes"


def test_a_trickling_endpoint_ends_at_the_wall_time_limit(server: ScriptedOpenAIServer) -> None:
    # Empty pieces every 0.1 s: never silent long enough for the read timeout, never any text.
    server.enqueue(Reply.stream([""] * 400, delay_s=0.1))
    start = time.perf_counter()
    with pytest.raises(ApiTimeoutError, match="did not finish within 1.5 s"):
        backend_for(api_spec(server, timeout_s=1.0)).chat(MESSAGES, GenerationSettings(max_tokens=5))
    assert time.perf_counter() - start < 4.0


def test_a_silent_endpoint_honours_stop_within_seconds(server: ScriptedOpenAIServer) -> None:
    server.enqueue(Reply.hang(30.0))
    backend = backend_for(api_spec(server, timeout_s=60.0))
    start = time.perf_counter()
    beats: list[str] = []

    def on_token(piece: str) -> None:
        beats.append(piece)
        if time.perf_counter() - start > 0.5:  # the user pressed Stop
            raise StopRequested()

    with pytest.raises(StopRequested):
        backend.chat(MESSAGES, GenerationSettings(), on_token)
    assert time.perf_counter() - start < 3.0
    assert beats and set(beats) == {""}  # heartbeats, no text


def test_a_long_retry_after_wait_honours_stop(server: ScriptedOpenAIServer) -> None:
    server.enqueue(Reply.error(503, "busy", headers={"Retry-After": "120"}))
    backend = OpenAIBackend(api_spec(server), GenerationSettingsConfig(), retry=RetryPolicy(max_retries=2))
    start = time.perf_counter()

    def on_token(piece: str) -> None:
        if time.perf_counter() - start > 0.5:
            raise StopRequested()

    with pytest.raises(StopRequested):
        backend.chat(MESSAGES, GenerationSettings(), on_token)
    assert time.perf_counter() - start < 3.0


def test_a_silent_endpoint_in_a_batch_honours_stop(server: ScriptedOpenAIServer) -> None:
    server.enqueue(Reply.hang(30.0), Reply.hang(30.0))
    backend = backend_for(api_spec(server, timeout_s=60.0, max_concurrency=2))
    start = time.perf_counter()

    def on_token(i: int, piece: str) -> None:
        if time.perf_counter() - start > 0.5:
            raise StopRequested()

    with pytest.raises(StopRequested):
        backend.chat_batch([MESSAGES, MESSAGES], [GenerationSettings(), GenerationSettings()], on_token)
    assert time.perf_counter() - start < 4.0


def test_retry_bounds_are_capped_whatever_the_options_say() -> None:
    policy = RetryPolicy.from_options(
        {"max_retries": 10_000, "backoff_base_s": 1e6, "backoff_max_s": 1e9, "max_retry_after_s": 1e12}
    )
    assert policy == RetryPolicy(
        max_retries=10, backoff_base_s=60.0, backoff_max_s=300.0, max_retry_after_s=600.0
    )
    for bad in ({"max_retries": -1}, {"backoff_max_s": float("inf")}, {"backoff_base_s": float("nan")}):
        with pytest.raises(ConfigError, match="finite and not negative"):
            RetryPolicy.from_options(bad)
