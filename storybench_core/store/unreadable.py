"""Stored rows a read could not decode: skipped by listings, logged once, shown as a flag.

One damaged row (a hand edit, a disk fault, a document another program wrote)
must not make every listing fail. Both stores skip it, remember it here, and
the sidebar and `storybench results` say how many were skipped; a read of
that one row by id still fails with a StoreError that names it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_REMEMBERED = 1000


@dataclass(frozen=True)
class UnreadableRow:
    collection: str
    row_id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.collection} {self.row_id}: {self.reason}"


def describe_failure(exc: BaseException) -> str:
    """A short reason for a decode failure (the row's contents are not quoted at length)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 160 else text[:157] + "..."


class UnreadableRows:
    """Thread-safe record of the rows skipped since the store was opened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, str], UnreadableRow] = {}

    def add(self, collection: str, row_id: object, exc: BaseException) -> UnreadableRow:
        row = UnreadableRow(collection, str(row_id), describe_failure(exc))
        with self._lock:
            key = (row.collection, row.row_id)
            if key in self._rows or len(self._rows) >= MAX_REMEMBERED:
                return row
            self._rows[key] = row
        log.info("skipped an unreadable stored row: %s", row)  # the flag (sidebar, CLI) is the warning
        return row

    def rows(self) -> list[UnreadableRow]:
        with self._lock:
            return list(self._rows.values())
