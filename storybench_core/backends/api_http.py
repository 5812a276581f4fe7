"""The HTTP client under every API model: connects only where endpoints.py allows, reads a bounded answer.

For each request the transport resolves the host, checks every address
(`endpoints.checked_addresses`) and then connects to the address it checked, so a
DNS answer that changes between the check and the connection (rebinding) gains
nothing; TLS still verifies the certificate against the host name. Redirects are
not followed, environment proxies are not used, and a response body is cut off
at `max_response_bytes` (the reader marks the stream as cut).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx2

from .endpoints import EndpointAccess, HostNotFound, checked_addresses

# A streamed answer of 32k tokens is about 8 MB of server-sent events; this is a memory bound.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
BODY_EXTENSION = "storybench.capped_body"


class CappedStream(httpx2.SyncByteStream):
    """A response body that ends after `cap` bytes; `truncated` says whether it was cut."""

    def __init__(self, inner: httpx2.SyncByteStream, cap: int) -> None:
        self._inner = inner
        self._cap = cap
        self.truncated = False

    def __iter__(self) -> Iterator[bytes]:
        seen = 0
        for chunk in self._inner:
            if seen + len(chunk) > self._cap:
                self.truncated = True
                yield chunk[: self._cap - seen]
                return
            seen += len(chunk)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class GuardedTransport(httpx2.BaseTransport):
    """httpx's transport, connecting only to checked addresses and reading bounded bodies."""

    def __init__(self, access: EndpointAccess, max_response_bytes: int | None = None) -> None:
        self._access = access
        self._cap = max_response_bytes or MAX_RESPONSE_BYTES
        self._inner = httpx2.HTTPTransport(trust_env=False)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        try:
            address = checked_addresses(str(url), self._access)[0]
        except HostNotFound as exc:  # DNS may come back: a connection error, retried as one
            raise httpx2.ConnectError(str(exc), request=request) from exc
        if url.scheme == "https":
            # Connect to the checked address; TLS still sends and verifies the host name.
            request.extensions = {**request.extensions, "sni_hostname": url.host}
        request.url = url.copy_with(host=address)  # the Host header keeps the name
        response = self._inner.handle_request(request)
        if isinstance(response.stream, httpx2.SyncByteStream):
            body = CappedStream(response.stream, self._cap)
            # httpx wraps the stream again; the extensions travel with the response itself.
            response.stream = body
            response.extensions = {**response.extensions, BODY_EXTENSION: body}
        return response

    def close(self) -> None:
        self._inner.close()


def guarded_client(access: EndpointAccess, timeout_s: float) -> httpx2.Client:
    """The httpx client an API model's openai client uses."""
    return httpx2.Client(
        transport=GuardedTransport(access),
        timeout=httpx2.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
        follow_redirects=False,
        trust_env=False,
    )


def was_truncated(response: httpx2.Response | None) -> bool:
    """True when the transport cut this response's body at the byte cap."""
    body = getattr(response, "extensions", {}).get(BODY_EXTENSION)
    return bool(getattr(body, "truncated", False))
