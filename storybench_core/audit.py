"""The audit trail: who changed what, and when, in the store's `audit` collection.

Every state-changing core function checks its principal (access.require), does
the change, then calls `record`. Entries are never edited and outlive what they
name (deleting an evaluation keeps the entries about it). `entries` reads them
back with filters; `to_frame`, `export_csv` and `export_json` serve the Activity
page and `storybench audit`.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from .access import ACTIONS, Action, Principal
from .errors import ConfigError
from .store.base import Doc, Store
from .text_safety import csv_safe_frame

FRAME_COLUMNS = ("ts", "actor", "actor_name", "role", "source", "action", "target", "details")
_sequence = itertools.count()  # orders this process's entries within one millisecond


@dataclass(frozen=True)
class AuditEntry:
    """One stored state change."""

    id: str
    ts: datetime
    actor: str
    actor_name: str
    role: str
    source: str
    action: str
    target: str | None
    details: dict[str, Any]

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> AuditEntry:
        return cls(
            id=str(doc["id"]),
            ts=doc["ts"],
            actor=str(doc.get("actor") or ""),
            actor_name=str(doc.get("actor_name") or ""),
            role=str(doc.get("role") or ""),
            source=str(doc.get("source") or ""),
            action=str(doc.get("action") or ""),
            target=doc.get("target"),
            details=dict(doc.get("details") or {}),
        )


def record(
    store: Store,
    principal: Principal,
    action: Action,
    target: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> str:
    """Store that principal did action to target (an evaluation id, model path, config name...)."""
    now = datetime.now(UTC)
    doc: Doc = {
        "id": _ordered_id(now),
        "ts": now,
        "actor": principal.id,
        "actor_name": principal.name,
        "role": principal.role,
        "source": principal.source,
        "action": action,
        "target": target,
        "details": dict(details or {}),
    }
    return store.add_audit(doc)


def _ordered_id(now: datetime) -> str:
    """An id that sorts like creation time: the stores keep milliseconds and break ties in ts by id."""
    millis = int(now.timestamp() * 1000)
    return f"{millis:013d}{next(_sequence) % 10**6:06d}{uuid.uuid4().hex[:12]}"


def entries(
    store: Store,
    *,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
) -> list[AuditEntry]:
    """Matching entries, newest first."""
    if action is not None and action not in ACTIONS:
        raise ConfigError(f"unknown audit action {action!r}; choose one of: {', '.join(ACTIONS)}")
    docs = store.list_audit(actor=actor, action=action, target=target, since=since, limit=limit)
    return [AuditEntry.from_doc(d) for d in docs]


def parse_since(text: str) -> datetime:
    """An ISO date or date-time (UTC when no offset is given) for the `since` filter."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ConfigError(
            f"--since {text!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC unless an offset is given)"
        ) from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _details_text(details: Mapping[str, Any]) -> str:
    return json.dumps(details, ensure_ascii=False, sort_keys=True, default=str) if details else ""


def to_frame(found: Iterable[AuditEntry]) -> pd.DataFrame:
    """One row per entry (details as compact JSON text), newest first as given."""
    rows = [{**asdict(e), "details": _details_text(e.details)} for e in found]
    return pd.DataFrame(rows, columns=["id", *FRAME_COLUMNS])


def export_csv(found: Iterable[AuditEntry]) -> str:
    """CSV with ISO times; no cell starts with = + - @ (text_safety.csv_safe)."""
    frame = to_frame(found)
    frame["ts"] = [ts.isoformat() for ts in frame["ts"]]
    return csv_safe_frame(frame).to_csv(index=False)


def export_json(found: Iterable[AuditEntry]) -> str:
    rows = [{**asdict(e), "ts": e.ts.isoformat()} for e in found]
    return json.dumps(rows, ensure_ascii=False, indent=2, default=str) + "\n"
