"""What the Activity page shows: the audit trail filtered, its exports, and (admins) the access list."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time

import pandas as pd

from .. import audit
from ..access import AccessPolicy, Action, Principal, require
from ..store.base import Store

DEFAULT_LIMIT = 500
ENTRY_COLUMNS = ["when", "who", "name", "role", "via", "action", "target", "details"]
ACCESS_COLUMNS = ["entry", "matches", "role"]


@dataclass(frozen=True)
class ActivityFilters:
    actor: str | None = None
    action: Action | None = None
    since: date | None = None  # from 00:00 UTC that day
    limit: int = DEFAULT_LIMIT


def since_datetime(day: date | None) -> datetime | None:
    return datetime.combine(day, time(0, 0), tzinfo=UTC) if day is not None else None


def entries(store: Store, filters: ActivityFilters) -> list[audit.AuditEntry]:
    """The matching audit entries, newest first, at most filters.limit."""
    return audit.entries(
        store,
        actor=filters.actor,
        action=filters.action,
        since=since_datetime(filters.since),
        limit=filters.limit,
    )


def actors(store: Store, limit: int = 2000) -> list[str]:
    """Who appears in the recent trail, for the 'Who' picker (sorted)."""
    return sorted({d["actor"] for d in store.list_audit(limit=limit) if d.get("actor")})


def entries_frame(found: list[audit.AuditEntry]) -> pd.DataFrame:
    """The table as the page shows it: local time to the second, details as compact JSON."""
    details = audit.to_frame(found)["details"]
    rows = [
        {
            "when": e.ts.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            "who": e.actor,
            "name": e.actor_name,
            "role": e.role,
            "via": e.source,
            "action": e.action,
            "target": e.target or "",
            "details": text,
        }
        for e, text in zip(found, details, strict=True)
    ]
    return pd.DataFrame(rows, columns=ENTRY_COLUMNS)


def csv_bytes(found: list[audit.AuditEntry]) -> bytes:
    return audit.export_csv(found).encode("utf-8")


def json_bytes(found: list[audit.AuditEntry]) -> bytes:
    return audit.export_json(found).encode("utf-8")


def access_frame(principal: Principal, policy: AccessPolicy) -> pd.DataFrame:
    """Who gets which role under the policy (admins only): one row per entry, then everyone else."""
    require(principal, "view_access")
    rows = [
        {
            "entry": entry,
            "matches": "everyone at the domain" if entry.startswith("@") else "this e-mail",
            "role": role,
        }
        for role, listed in (("admin", policy.admins), ("operator", policy.operators))
        for entry in listed
    ]
    rows.append({"entry": "everyone else signed in", "matches": "", "role": policy.default_role})
    return pd.DataFrame(rows, columns=ACCESS_COLUMNS)


def limits_caption(policy: AccessPolicy) -> str:
    """The per-operator limits in one line (0 means none)."""

    def show(n: int) -> str:
        return str(n) if n else "no limit"

    return (
        f"Per operator: {show(policy.max_queued_evaluations)} queued or running evaluation(s), "
        f"{show(policy.max_queued_tasks)} tasks waiting. Admins have no limit."
    )
