"""The stop check of the evaluation being worked on, for code that has no hook of its own.

A model load can download gigabytes (hub.py) long before the first token, and
the backend factories take only (spec, generation). The runner sets its
`should_stop` here around a load; the download's progress callback asks it
and raises StopRequested, so Stop works during a download too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .errors import StopRequested

StopCheck = Callable[[], bool]

_current: ContextVar[StopCheck | None] = ContextVar("storybench_stop_check", default=None)


@contextmanager
def stop_check(check: StopCheck) -> Iterator[None]:
    """Make `check` the stop check of this thread (and context) while the block runs."""
    token = _current.set(check)
    try:
        yield
    finally:
        _current.reset(token)


def current_stop_check() -> StopCheck | None:
    return _current.get()


def raise_if_stopped(check: StopCheck | None = None) -> None:
    """Raise StopRequested when the given (or current) stop check says so."""
    check = check or _current.get()
    if check is not None and check():
        raise StopRequested()
