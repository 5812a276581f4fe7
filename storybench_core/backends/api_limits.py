"""Per-endpoint limits shared by every API backend in the process: concurrency and requests per minute.

Two models on one endpoint share its limits (the latest spec for an endpoint sets them), so a
judge and a candidate on the same server never exceed what it was configured to take.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class ConcurrencyGate:
    """A counting semaphore whose size may change (the latest spec for an endpoint wins)."""

    def __init__(self, limit: int) -> None:
        self._cond = threading.Condition()
        self.limit = limit
        self.in_flight = 0

    def set_limit(self, limit: int) -> None:
        with self._cond:
            self.limit = limit
            self._cond.notify_all()

    def __enter__(self) -> ConcurrencyGate:
        with self._cond:
            self._cond.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()


class RateLimiter:
    """At most `per_window` request starts in any `window_s` seconds (a sliding window)."""

    def __init__(
        self,
        per_window: int,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._starts: deque[float] = deque()

    def acquire(self) -> float:
        """Wait for a free slot and take it; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                while self._starts and now - self._starts[0] >= self.window_s:
                    self._starts.popleft()
                if len(self._starts) < self.per_window:
                    self._starts.append(now)
                    return waited
                delay = self._starts[0] + self.window_s - now
            self._sleep(delay)
            waited += delay


_LIMITS_LOCK = threading.Lock()
_GATES: dict[str, ConcurrencyGate] = {}
_RATE_LIMITERS: dict[str, RateLimiter] = {}


def endpoint_gate(base_url: str, max_concurrency: int) -> ConcurrencyGate:
    """The process-wide concurrency gate for an endpoint, resized to max_concurrency."""
    key = base_url.rstrip("/")
    with _LIMITS_LOCK:
        gate = _GATES.get(key)
        if gate is None:
            gate = _GATES[key] = ConcurrencyGate(max_concurrency)
    if gate.limit != max_concurrency:
        gate.set_limit(max_concurrency)
    return gate


def endpoint_rate_limiter(base_url: str, requests_per_minute: int | None) -> RateLimiter | None:
    """The process-wide requests-per-minute limiter for an endpoint (None: unlimited)."""
    if not requests_per_minute:
        return None
    key = base_url.rstrip("/")
    with _LIMITS_LOCK:
        limiter = _RATE_LIMITERS.get(key)
        if limiter is None:
            limiter = _RATE_LIMITERS[key] = RateLimiter(requests_per_minute)
        limiter.per_window = requests_per_minute
    return limiter
