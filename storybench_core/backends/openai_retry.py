"""When to try a failed API request again, and after how long: bounded backoff, Retry-After honoured.

The retry loop is the backend's own (the openai client is made with max_retries=0), so every
retry is logged and follows this policy; every bound is capped whatever a config asks for.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import openai

from ..errors import ConfigError

# The most a config may ask for: retries are bounded whatever the options say.
RETRY_LIMITS: dict[str, float] = {
    "max_retries": 10,
    "backoff_base_s": 60.0,
    "backoff_max_s": 300.0,
    "max_retry_after_s": 600.0,
}


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before trying a failed request again."""

    max_retries: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    # A Retry-After longer than this is not waited for: the error is raised at once.
    max_retry_after_s: float = 300.0

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RetryPolicy:
        """The policy a model's options ask for, each bound clipped to RETRY_LIMITS."""
        names = ("max_retries", "backoff_base_s", "backoff_max_s", "max_retry_after_s")
        try:
            asked = {n: type(getattr(cls, n))(options[n]) for n in names if n in options}
        except (TypeError, ValueError, OverflowError) as exc:
            raise ConfigError(f"model options: {', '.join(names)} must be numbers ({exc})") from None
        if any(not 0 <= v < float("inf") for v in asked.values()):
            raise ConfigError(f"model options: {', '.join(names)} must be finite and not negative")
        return cls(**{n: min(v, RETRY_LIMITS[n]) for n, v in asked.items()})

    def backoff_s(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Full jitter: uniform in [0, min(max, base · 2^attempt)]."""
        return rng() * min(self.backoff_max_s, self.backoff_base_s * 2**attempt)


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds a server asked us to wait: retry-after-ms, or Retry-After as seconds or an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def retry_delay_s(
    exc: Exception, attempt: int, policy: RetryPolicy, rng: Callable[[], float]
) -> float | None:
    """How long to wait before retry number attempt+1, or None when the error is final.

    429, 408, 5xx and refused/dropped connections are retried. A timeout is not: a
    server that stayed silent for timeout_s rarely answers the same request faster,
    and retrying would multiply the wait.
    """
    if attempt >= policy.max_retries or isinstance(exc, openai.APITimeoutError):
        return None
    if isinstance(exc, openai.APIConnectionError):
        return policy.backoff_s(attempt, rng)
    if isinstance(exc, openai.APIStatusError) and (exc.status_code in (408, 429) or exc.status_code >= 500):
        after = parse_retry_after(exc.response.headers)
        if after is None:
            return policy.backoff_s(attempt, rng)
        return after if after <= policy.max_retry_after_s else None
    return None
