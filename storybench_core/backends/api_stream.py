"""One streamed request read in a helper thread, so that its caller can always stop waiting.

A silent endpoint blocks the thread that reads it until the socket's read timeout.
Here that thread is a helper: the caller takes items from a queue, and while none
arrive it calls `on_idle` about once a second (where a Stop request is noticed)
and gives up at the wall-time deadline. The helper closes the stream itself when
the caller leaves, at the latest when its read times out.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any

POLL_S = 1.0


class WallTimeExceeded(Exception):
    """The request as a whole took longer than its wall-time limit."""


def pump(
    open_stream: Callable[[], Iterable[Any]],
    *,
    deadline: float,
    on_idle: Callable[[], None] | None = None,
    on_open: Callable[[Any], None] | None = None,
    poll_s: float = POLL_S,
) -> Generator[Any, None, None]:
    """The items of open_stream(), read in a helper thread; raises what the helper raised.

    `deadline` is a time.monotonic() value; past it WallTimeExceeded is raised.
    Leaving the iteration early (break, an exception from on_idle) tells the helper
    to close the stream.
    """
    items: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=64)
    leaving = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not leaving.is_set():
            try:
                items.put((kind, value), timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        stream: Any = None
        try:
            stream = open_stream()
            if on_open is not None:
                on_open(stream)
            for item in stream:
                if leaving.is_set() or not put("item", item):
                    break
            put("end", None)
        except BaseException as exc:  # handed to the caller, who raises it
            put("error", exc)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # closing a broken stream may fail; nothing to do
                    pass

    reader = threading.Thread(target=read, name="storybench-api-read", daemon=True)
    reader.start()
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WallTimeExceeded()
            try:
                kind, value = items.get(timeout=min(poll_s, remaining))
            except queue.Empty:
                if on_idle is not None:
                    on_idle()
                continue
            if kind == "item":
                yield value
            elif kind == "end":
                return
            else:
                raise value
    finally:
        leaving.set()
