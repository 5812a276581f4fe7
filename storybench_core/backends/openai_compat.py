"""Any OpenAI-compatible chat endpoint: OpenAI, DeepInfra, OpenRouter, Ollama, LM Studio, vLLM, llama.cpp.

With openai_endpoint.py (the client, error translation) and openai_retry.py
(when to retry), the only modules that import `openai`. It streams chat
completions, runs its own retry loop (429, 5xx and connection errors;
exponential backoff with full jitter; Retry-After honoured; every bound
capped) so every retry is logged and testable, limits concurrency and
requests per minute per endpoint across the whole process (api_limits.py),
and translates the library's errors into ours. Which endpoint a
model may reach and which key it carries is endpoints.py's decision; the key
stays in here: never in a message, a log line or a Completion.

Every request ends: after `timeout_s` of silence, at its wall-time limit
(`timeout_s` plus 0.1 s per token of max_tokens), and a streamed answer is cut
at max_tokens pieces or MAX_TOKEN_BYTES bytes a token (finish_reason "length").
While it waits, the backend calls on_token("") about once a second, so a caller
can raise StopRequested even when the endpoint says nothing.

ModelSpec.options understood here: n_ctx, max_retries, backoff_base_s,
backoff_max_s, max_retry_after_s, stream_usage (False: don't ask for usage),
max_tokens_param ("max_completion_tokens" for newer OpenAI models), and
extra_body (a dict merged into each request, e.g. OpenRouter routing).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import openai

from ..config import GenerationSettingsConfig, ModelSpec
from ..errors import ApiError, ApiTimeoutError, StopRequested, StorybenchError
from .api_http import was_truncated
from .api_limits import ConcurrencyGate, RateLimiter, endpoint_gate, endpoint_rate_limiter
from .api_stream import POLL_S, WallTimeExceeded, pump
from .base import BatchTokenCallback, Completion, GenerationSettings, Message, TokenCallback
from .endpoints import NO_KEY, api_key, endpoint_access
from .openai_endpoint import describe_error, map_error, open_client, server_message
from .openai_retry import RETRY_LIMITS, RetryPolicy, parse_retry_after, retry_delay_s

# Imported from here by callers and tests (this is the API model's module).
__all__ = [
    "NO_KEY",
    "RETRY_LIMITS",
    "ConcurrencyGate",
    "OpenAIBackend",
    "RateLimiter",
    "RetryPolicy",
    "approx_tokens",
    "create_openai_backend",
    "endpoint_gate",
    "endpoint_rate_limiter",
    "list_endpoint_models",
    "map_error",
    "parse_retry_after",
    "resolve_api_key",
]

log = logging.getLogger(__name__)

# Structured-output modes, strongest first; a server that rejects one gets the next.
STRUCTURED_MODES = ("json_schema", "json_object", "none")
# A streamed answer may hold at most this many UTF-8 bytes per token of max_tokens (and 4 KiB).
MAX_TOKEN_BYTES = 16
# Wall time of one request: timeout_s for the first byte, then at least 10 tokens a second.
WALL_S_PER_TOKEN = 0.1


# --- the API key ----------------------------------------------------------------


def resolve_api_key(spec: ModelSpec) -> str:
    """The key bound to spec's endpoint (endpoints.py), NO_KEY when none is; AuthError when missing."""
    return api_key(endpoint_access(spec))


# --- the backend ------------------------------------------------------------------


def approx_tokens(messages: Sequence[Message]) -> int:
    """An APPROXIMATE token count: ~4 characters a token plus a few per message.

    Remote tokenizers are unknown here; good enough to fit a conversation into
    the context with some margin, not for billing.
    """
    return 3 + sum(4 + (len(m.get("content") or "") + 3) // 4 for m in messages)


class OpenAIBackend:
    """Streams chat completions from one model on an OpenAI-compatible endpoint."""

    supports_json_schema = True
    supports_batch = True  # chat_batch: the runs sent concurrently, within the endpoint's limits

    def __init__(
        self,
        spec: ModelSpec,
        generation: GenerationSettingsConfig | None = None,
        *,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not spec.base_url or not spec.api_model:
            raise ApiError(f"model '{spec.display_name}': an API model needs base_url and api_model")
        self.spec = spec
        self.name = spec.display_name
        self.base_url = spec.base_url.rstrip("/")
        self.model = spec.api_model
        self.retry = retry or RetryPolicy.from_options(spec.options)
        self._sleep = sleep
        self._rng = rng
        self._n_ctx = int(spec.options.get("n_ctx") or (generation.n_ctx if generation else 4096))
        self._client, self._endpoint = open_client(spec)
        self._gate = endpoint_gate(self.base_url, spec.max_concurrency)
        self._rate = endpoint_rate_limiter(self.base_url, spec.requests_per_minute)
        # Request features, downgraded once when the server rejects them.
        self._structured = STRUCTURED_MODES[0]
        self._stream_options = bool(spec.options.get("stream_usage", True))
        self._max_tokens_param = str(spec.options.get("max_tokens_param", "max_tokens"))
        self.load_note = f"{self.model} at {self.base_url}"
        self.closed = False

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.model!r} at {self.base_url!r})"

    # -- protocol --

    def chat(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings,
        on_token: TokenCallback | None = None,
    ) -> Completion:
        attempt, waited = 0, 0.0
        while True:
            emitted: list[str] = []
            try:
                completion = self._attempt(messages, settings, on_token, emitted)
            except StopRequested:
                raise
            except openai.OpenAIError as exc:
                if not emitted and isinstance(exc, openai.APIStatusError) and self._downgrade(exc, settings):
                    continue
                delay = None if emitted else retry_delay_s(exc, attempt, self.retry, self._rng)
                if delay is None:
                    raise self._final_error(exc, attempt + 1, emitted) from exc
                log.warning(
                    "%s: %s from %s; retry %d of %d in %.2f s",
                    self.name,
                    describe_error(exc),
                    self.base_url,
                    attempt + 1,
                    self.retry.max_retries,
                    delay,
                )
                self._wait(delay, on_token)
                attempt, waited = attempt + 1, waited + delay
                continue
            completion.extra["attempts"] = attempt + 1
            completion.extra["retry_wait_s"] = round(waited, 3)
            return completion

    def chat_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        settings: Sequence[GenerationSettings],
        on_token: BatchTokenCallback | None = None,
        on_done: Callable[[int, Completion], None] | None = None,
    ) -> list[Completion]:
        """Send every conversation at once from a thread pool; `chat`'s gate, rate limit and retries apply.

        Callbacks run one at a time: on_token under a lock, on_done in the calling
        thread as each request finishes. A request that fails for good gives a
        Completion with finish_reason "error" (extra["error"]) and the others go on.
        StopRequested from a callback closes every open stream and propagates.
        """
        if len(conversations) != len(settings):
            raise ApiError(f"{len(conversations)} conversations but {len(settings)} generation settings")
        results: list[Completion | None] = [None] * len(conversations)
        if not conversations:
            return []
        lock = threading.Lock()
        stopping = threading.Event()

        def one(i: int) -> Completion:
            def piece(text: str) -> None:
                if stopping.is_set():
                    raise StopRequested()
                if on_token is not None:
                    with lock:
                        on_token(i, text)

            if stopping.is_set():
                raise StopRequested()
            try:
                return self.chat(conversations[i], settings[i], piece)
            except StorybenchError as exc:
                return Completion("", "error", 0, 0, 0.0, template="api", extra={"error": str(exc)})

        workers = min(len(conversations), self.spec.max_concurrency)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="storybench-api") as pool:
            pending: dict[Future[Completion], int] = {
                pool.submit(one, i): i for i in range(len(conversations))
            }
            try:
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        i = pending.pop(future)
                        results[i] = future.result()  # StopRequested or a bug propagates from here
                        if on_done is not None:
                            on_done(i, results[i])  # type: ignore[arg-type]
            except BaseException:
                stopping.set()  # open streams end at their next piece; queued requests never start
                for future in pending:
                    future.cancel()
                raise
        return [r for r in results if r is not None]

    def _wait(self, delay: float, on_token: TokenCallback | None) -> None:
        """Sleep before a retry, in slices of at most POLL_S with a heartbeat between (Stop works)."""
        if on_token is None:
            self._sleep(delay)
            return
        while delay > 0:
            piece = min(delay, POLL_S)
            self._sleep(piece)
            delay -= piece
            if delay > 0:
                on_token("")

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Approximate (see approx_tokens): the endpoint's tokenizer is not available here."""
        return approx_tokens(messages)

    def context_size(self) -> int:
        return self._n_ctx

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._client.close()

    # -- one request --

    def _request(self, messages: Sequence[Message], settings: GenerationSettings) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "stream": True,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "seed": settings.seed,
            self._max_tokens_param: settings.max_tokens,
        }
        if self._stream_options:
            request["stream_options"] = {"include_usage": True}
        if settings.stop:
            request["stop"] = list(settings.stop)
        if settings.json_schema is not None:
            if self._structured == "json_schema":
                request["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "judgement", "schema": settings.json_schema, "strict": True},
                }
            elif self._structured == "json_object":
                request["response_format"] = {"type": "json_object"}
        extra_body = self.spec.options.get("extra_body")
        if isinstance(extra_body, dict):
            request["extra_body"] = extra_body
        return request

    def _attempt(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings,
        on_token: TokenCallback | None,
        emitted: list[str],
    ) -> Completion:
        request = self._request(messages, settings)
        beat = _heartbeat(on_token)
        with self._gate:
            if self._rate is not None:
                self._rate.acquire()
            log.debug("%s: POST %s/chat/completions", self.name, self.base_url)
            start = time.perf_counter()
            wall_s = self.spec.timeout_s + WALL_S_PER_TOKEN * settings.max_tokens
            first_token_s: float | None = None
            finish: str | None = None
            capped: str | None = None
            usage: Any = None
            budget_bytes = max(4096, MAX_TOKEN_BYTES * settings.max_tokens)
            used_bytes = 0
            opened: list[Any] = []
            chunks = pump(
                lambda: self._client.chat.completions.create(**request),
                deadline=time.monotonic() + wall_s,
                on_idle=beat,
                on_open=opened.append,
            )
            last_text = time.monotonic()
            try:
                for chunk in chunks:
                    if getattr(chunk, "usage", None):
                        usage = chunk.usage
                    for choice in chunk.choices or ():
                        if choice.index != 0:
                            continue
                        text = getattr(choice.delta, "content", None) if choice.delta else None
                        if text:
                            size = len(text.encode("utf-8"))
                            if used_bytes + size > budget_bytes:
                                text = _clip_utf8(text, budget_bytes - used_bytes)
                                capped = "bytes"
                            if text:
                                if first_token_s is None:
                                    first_token_s = time.perf_counter() - start
                                used_bytes += len(text.encode("utf-8"))
                                emitted.append(text)
                                last_text = time.monotonic()
                                if on_token is not None:
                                    on_token(text)  # may raise StopRequested: the reader closes the stream
                            if capped is None and len(emitted) >= settings.max_tokens:
                                capped = "tokens"
                        elif time.monotonic() - last_text >= POLL_S:
                            last_text = time.monotonic()  # chunks without text: still a chance to stop
                            beat()
                        if choice.finish_reason:
                            finish = choice.finish_reason
                    if capped is not None:
                        break  # the endpoint ignored max_tokens: stop reading, the reader hangs up
            except WallTimeExceeded:
                raise ApiTimeoutError(
                    f"model '{self.name}': {self.base_url} did not finish within {wall_s:g} s "
                    f"(timeout_s {self.spec.timeout_s:g} + {WALL_S_PER_TOKEN:g} s per token of max_tokens); "
                    "check the server, or raise the model's timeout_s"
                ) from None
            finally:
                chunks.close()
            if capped is None and opened and was_truncated(getattr(opened[0], "response", None)):
                capped = "bytes"
            elapsed = max(time.perf_counter() - start, 1e-6)
        completion = self._completion(messages, settings, emitted, finish, usage, elapsed, first_token_s)
        if capped is not None:
            completion.finish_reason = "length"
            completion.extra["client_cap"] = capped
            completion.completion_tokens = min(completion.completion_tokens, settings.max_tokens)
            log.warning(
                "%s: %s sent more than max_tokens=%d allows (%s); cut it off",
                self.name,
                self.base_url,
                settings.max_tokens,
                capped,
            )
        return completion

    def _completion(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings,
        pieces: list[str],
        finish: str | None,
        usage: Any,
        elapsed: float,
        first_token_s: float | None,
    ) -> Completion:
        text = "".join(pieces)
        extra: dict[str, Any] = {
            "endpoint": self.base_url,
            "api_model": self.model,
            "finish_reason_raw": finish,
        }
        if settings.json_schema is not None:
            extra["structured_output"] = self._structured
        evaluated: int | None = None
        if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
            prompt_tokens, completion_tokens = (
                int(usage.prompt_tokens or 0),
                int(usage.completion_tokens or 0),
            )
            cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None)
            if cached is not None:
                extra["cached_tokens"] = int(cached)
                evaluated = prompt_tokens - int(cached)
        else:
            # No usage from the server: one streamed piece is about one token.
            prompt_tokens = approx_tokens(messages)
            completion_tokens = max(len(pieces), (len(text) + 3) // 4 if text else 0)
            extra["usage_estimated"] = True
        # "length" and "stop" as the runner knows them; other reasons (content_filter) kept as they are.
        finish_reason = "stop" if finish in (None, "stop", "eos", "tool_calls", "function_call") else finish
        return Completion(
            text=text,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            generation_time_s=elapsed,
            prompt_tokens_evaluated=evaluated,
            first_token_s=first_token_s,
            template="api",
            extra=extra,
        )

    def _downgrade(self, exc: openai.APIStatusError, settings: GenerationSettings) -> bool:
        """Drop or change a request feature the server rejected (400/422); True to resend at once."""
        if exc.status_code not in (400, 422):
            return False
        said = server_message(exc).lower()
        if self._stream_options and "stream_options" in said:
            self._stream_options = False
            log.info("%s: %s rejects stream_options; token usage will be estimated", self.name, self.base_url)
            return True
        if self._max_tokens_param == "max_tokens" and "max_completion_tokens" in said:
            self._max_tokens_param = "max_completion_tokens"
            log.info("%s: %s wants max_completion_tokens instead of max_tokens", self.name, self.base_url)
            return True
        if settings.json_schema is not None and self._structured != STRUCTURED_MODES[-1]:
            rejected = self._structured
            self._structured = STRUCTURED_MODES[STRUCTURED_MODES.index(rejected) + 1]
            log.warning(
                "%s: %s rejected response_format %s (HTTP %d); falling back to %s",
                self.name,
                self.base_url,
                rejected,
                exc.status_code,
                self._structured,
            )
            return True
        return False

    def _final_error(self, exc: openai.OpenAIError, attempts: int, emitted: list[str]) -> ApiError:
        error = map_error(exc, self._endpoint, attempts=attempts)
        if emitted and not isinstance(error, ApiTimeoutError):
            chars = sum(len(p) for p in emitted)
            error = type(error)(f"{error} (the stream broke after {chars} characters; not retried)")
        return error


def _heartbeat(on_token: TokenCallback | None) -> Callable[[], None]:
    """on_token(""): lets the caller raise StopRequested while the endpoint is silent."""
    if on_token is None:
        return lambda: None
    return lambda: on_token("")


def _clip_utf8(text: str, budget: int) -> str:
    """The longest prefix of text within budget UTF-8 bytes."""
    return text.encode("utf-8")[: max(budget, 0)].decode("utf-8", errors="ignore")


def create_openai_backend(spec: ModelSpec, generation: GenerationSettingsConfig) -> OpenAIBackend:
    """Registry factory for kind='api'."""
    return OpenAIBackend(spec, generation)


def list_endpoint_models(spec: ModelSpec, *, retry: RetryPolicy | None = None) -> list[str]:
    """Model ids served at spec.base_url (GET /models), sorted; errors mapped like chat's."""
    if not spec.base_url:
        raise ApiError(f"model '{spec.display_name}': base_url is not set")
    policy = retry or RetryPolicy.from_options(spec.options)
    base_url = spec.base_url.rstrip("/")
    client, endpoint = open_client(spec)
    try:
        attempt = 0
        while True:
            try:
                return sorted(model.id for model in client.models.list())
            except openai.OpenAIError as exc:
                delay = retry_delay_s(exc, attempt, policy, random.random)
                if delay is None:
                    raise map_error(exc, endpoint, attempts=attempt + 1, listing=True) from exc
                log.warning("listing models at %s: %s; retry in %.2f s", base_url, describe_error(exc), delay)
                time.sleep(delay)
                attempt += 1
    finally:
        client.close()
