"""One OpenAI-compatible endpoint as a backend sees it: its checked client, and its errors as ours.

`open_client` binds a model to its endpoint (endpoints.py decides which endpoint and which key)
and checks the addresses before the first request; `map_error` turns the openai library's
errors into our ApiError family, each message saying what to do, never holding the key.
"""

from __future__ import annotations

from dataclasses import dataclass

import openai

from ..config import ModelSpec
from ..errors import ApiError, ApiTimeoutError, AuthError, RateLimitError
from ..redact import redact
from .api_http import guarded_client
from .endpoints import NO_KEY, EndpointAccess, HostNotFound, api_key, checked_addresses, endpoint_access


@dataclass(frozen=True)
class ApiEndpoint:
    """What an error message may name about an endpoint (never the key itself)."""

    name: str
    base_url: str
    model: str
    key_env: str | None
    key: str
    timeout_s: float
    hint: str = ""

    def mask(self, text: str) -> str:
        return redact(text, extra=[self.key] if self.key != NO_KEY else None)


def endpoint_for(spec: ModelSpec, access: EndpointAccess, key: str) -> ApiEndpoint:
    return ApiEndpoint(
        name=spec.display_name,
        base_url=access.base_url,
        model=spec.api_model or "",
        key_env=access.key_env,
        key=key,
        timeout_s=spec.timeout_s,
        hint=access.hint,
    )


def server_message(exc: openai.APIError) -> str:
    body = exc.body
    if isinstance(body, dict):
        text = body.get("message") or body.get("error") or body.get("detail") or body
    else:
        text = body or exc.message
    text = str(text).strip()
    return text if len(text) <= 300 else text[:300] + "…"


def map_error(
    exc: openai.OpenAIError, ep: ApiEndpoint, *, attempts: int = 1, listing: bool = False
) -> ApiError:
    """Our error for an openai library error, with a message saying what to do."""
    tried = f" after {attempts} attempts" if attempts > 1 else ""
    who = f"model '{ep.name}'"
    if isinstance(exc, openai.APITimeoutError):
        return ApiTimeoutError(
            f"{who}: no answer from {ep.base_url} within {ep.timeout_s:g} s; "
            "check the server, or raise the model's timeout_s"
        )
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f"{type(cause).__name__}: {cause}" if cause else exc.message
        hint = f" ({ep.hint})" if ep.hint else ""
        return ApiError(
            ep.mask(f"{who}: cannot connect to {ep.base_url}{tried} ({detail}); is the server running{hint}?")
        )
    if not isinstance(exc, openai.APIStatusError):
        return ApiError(ep.mask(f"{who}: {ep.base_url} failed{tried}: {exc}"))
    code = exc.status_code
    said = f"HTTP {code}: {server_message(exc)}"
    if code in (401, 403):
        if ep.key == NO_KEY:
            msg = (
                f"{who}: {ep.base_url} wants an API key ({said}); set the model's api_key_env to the "
                "name of the environment variable that holds it"
            )
        else:
            msg = f"{who}: the API key from ${ep.key_env} was refused by {ep.base_url} ({said}); check it"
        return AuthError(ep.mask(msg))
    if code == 404:
        if listing:
            msg = f"{who}: {ep.base_url}/models does not exist ({said}); check base_url (usually ends in /v1)"
        else:
            msg = (
                f"{who}: model '{ep.model}' not found at {ep.base_url} ({said}); see the models it serves "
                f"with GET {ep.base_url}/models (the model picker on the Configure page lists them), "
                "and check base_url (most servers end in /v1)"
            )
        return ApiError(ep.mask(msg))
    if code == 429:
        return RateLimitError(
            ep.mask(
                f"{who}: {ep.base_url} is still rate-limiting{tried} ({said}); lower max_concurrency or set "
                "requests_per_minute for this model, or try again later"
            )
        )
    if code >= 500:
        return ApiError(ep.mask(f"{who}: {ep.base_url} had a server error{tried} ({said}); try again later"))
    return ApiError(ep.mask(f"{who}: {ep.base_url} refused the request ({said})"))


def _make_client(access: EndpointAccess, key: str, timeout_s: float) -> openai.OpenAI:
    # max_retries=0: the retry loop is ours, so it is logged and honours our policy.
    return openai.OpenAI(
        api_key=key,
        base_url=access.base_url,
        timeout=timeout_s,
        max_retries=0,
        http_client=guarded_client(access, timeout_s),
    )


def open_client(spec: ModelSpec) -> tuple[openai.OpenAI, ApiEndpoint]:
    """The client for spec's endpoint, once its binding and its addresses are checked (fails fast)."""
    access = endpoint_access(spec)
    key = api_key(access)
    try:
        checked_addresses(access.base_url, access)  # a refused address fails here, never retried
    except HostNotFound:
        pass  # maybe later: the transport resolves and checks again for every request
    return _make_client(access, key, spec.timeout_s), endpoint_for(spec, access, key)


def describe_error(exc: openai.OpenAIError) -> str:
    """A short name for an error in a retry log line: "HTTP 429", "APIConnectionError"."""
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}"
    return type(exc).__name__
