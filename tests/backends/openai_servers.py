"""A scripted OpenAI-compatible HTTP server on loopback, for testing API backends without a network.

Each request to /v1/chat/completions takes the next scripted Reply (or the
default streamed story); GET /v1/models lists `models`. The server records
every request (path, headers, JSON body), the most requests it ever had
in flight at once and how many streams it wrote to the end: counters a test
asserts on instead of timing the client.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ENDPOINTS_ENV = "STORYBENCH_API_ENDPOINTS"


def allow_endpoint(monkeypatch: Any, base_url: str, key_env: str = "") -> None:
    """Allowlist one loopback endpoint for this test, as an operator would (key_env: the key bound to it)."""
    current = json.loads(os.environ.get(ENDPOINTS_ENV) or "{}")
    current[base_url] = key_env
    monkeypatch.setenv(ENDPOINTS_ENV, json.dumps(current))


@dataclass
class Reply:
    """One scripted answer."""

    kind: str  # "stream" | "error" | "hang" | "json"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    pieces: tuple[str, ...] = ()
    usage: bool = True
    finish: str | None = "stop"
    delay_s: float = 0.0  # before each streamed piece (and before an error/json answer)
    body: Any = None
    until_in_flight: int = 0  # a stream starts once this many requests have been open at the same time

    @classmethod
    def stream(
        cls,
        pieces: tuple[str, ...] | list[str] = ("Once", " upon", " a", " time", "."),
        *,
        usage: bool = True,
        finish: str | None = "stop",
        delay_s: float = 0.0,
        until_in_flight: int = 0,
    ) -> Reply:
        return cls(
            "stream",
            pieces=tuple(pieces),
            usage=usage,
            finish=finish,
            delay_s=delay_s,
            until_in_flight=until_in_flight,
        )

    @classmethod
    def error(
        cls, status: int, message: str = "scripted error", headers: dict[str, str] | None = None
    ) -> Reply:
        body = {"error": {"message": message, "type": "scripted", "code": None}}
        return cls("error", status=status, headers=dict(headers or {}), body=body)

    @classmethod
    def hang(cls, seconds: float = 5.0) -> Reply:
        return cls("hang", delay_s=seconds)

    @classmethod
    def json(cls, body: Any, status: int = 200) -> Reply:
        return cls("json", status=status, body=body)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class ScriptedOpenAIServer:
    """Start with `with ScriptedOpenAIServer() as server:`; `server.base_url` ends in /v1."""

    def __init__(self, models: tuple[str, ...] = ("story-model", "judge-model")) -> None:
        self.models = models
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.disconnects = 0
        self.streams_finished = 0  # streams written to their last event ([DONE])
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when in_flight changes
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wait until no request is being answered (timeout_s only guards against a hang)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.in_flight == 0, timeout_s)

    def start(self) -> ScriptedOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling --

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else Reply.stream()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

            def _record(self, body: Any) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                with server._lock:
                    server.requests.append(RecordedRequest(self.command, self.path, headers, body))

            def do_GET(self) -> None:
                self._record(None)
                if self.path.rstrip("/") == "/v1/models":
                    data = {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]}
                    self._send_json(200, data)
                else:
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                self._record(body)
                with server._changed:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server._changed.notify_all()
                try:
                    self._answer(server._next_reply(), body or {})
                except (BrokenPipeError, ConnectionResetError):
                    with server._lock:
                        server.disconnects += 1
                finally:
                    with server._changed:
                        server.in_flight -= 1
                        server._changed.notify_all()

            def _answer(self, reply: Reply, body: dict[str, Any]) -> None:
                if reply.kind == "hang":
                    server._closing.wait(reply.delay_s)
                    return
                if reply.delay_s and reply.kind != "stream":
                    time.sleep(reply.delay_s)
                if reply.kind in ("error", "json"):
                    self._send_json(reply.status, reply.body, reply.headers)
                    return
                self._stream(reply, body)

            def _stream(self, reply: Reply, body: dict[str, Any]) -> None:
                if reply.until_in_flight:
                    # max_in_flight, not in_flight: a woken waiter must not miss it because another
                    # stream already finished. 10 s only guards against a client that never sends the rest.
                    with server._changed:
                        server._changed.wait_for(lambda: server.max_in_flight >= reply.until_in_flight, 10.0)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()  # HTTP/1.0: the body ends when the connection closes
                model = body.get("model", "story-model")
                base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model}
                for i, piece in enumerate(reply.pieces):
                    if reply.delay_s:
                        time.sleep(reply.delay_s)
                    delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                    self._event(base | {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
                self._event(base | {"choices": [{"index": 0, "delta": {}, "finish_reason": reply.finish}]})
                wants_usage = (body.get("stream_options") or {}).get("include_usage")
                if reply.usage and wants_usage:
                    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
                    usage = {"prompt_tokens": prompt, "completion_tokens": len(reply.pieces)}
                    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                    self._event(base | {"choices": [], "usage": usage})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                with server._lock:
                    server.streams_finished += 1

            def _event(self, data: dict[str, Any]) -> None:
                self.wfile.write(b"data: " + json.dumps(data).encode() + b"\n\n")
                self.wfile.flush()

            def _send_json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

        return Handler
