"""Clean-up of old evaluations: archive (hidden from leaderboards, data kept) or export-then-delete.

Both are admin actions, checked here and recorded in the audit trail. An
archived evaluation keeps every response and judgement and can be restored;
`visible` is the filter the Results page, the leaderboard and the Vote page
apply. Deleting writes one JSON file with everything the store held for the
evaluation (responses with their messages, judgements, console, verdicts,
votes) and deletes only once that file is written and reads back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import audit
from .access import Principal, require
from .errors import JobError, StorybenchError
from .results.export import evaluation_json
from .store.base import ACTIVE_STATUSES, Doc, Store


def is_archived(evaluation: Doc) -> bool:
    return evaluation.get("archived_at") is not None


def visible(evaluations: Iterable[Doc]) -> list[Doc]:
    """The evaluations that are not archived, in the order given."""
    return [e for e in evaluations if not is_archived(e)]


def _settled(store: Store, evaluation_id: str, what: str) -> Doc:
    from .jobqueue import get_evaluation

    doc = get_evaluation(store, evaluation_id)
    if doc["status"] in ACTIVE_STATUSES:
        raise JobError(
            f"evaluation {evaluation_id} is {doc['status']}; stop it (Run page or Ctrl-C) before you {what} it"
        )
    return doc


def archive_evaluation(store: Store, evaluation_id: str, principal: Principal) -> Doc:
    """Hide a finished evaluation from leaderboards and pickers, keeping its data (admins)."""
    require(principal, "archive")
    doc = _settled(store, evaluation_id, "archive")
    if is_archived(doc):
        return doc
    stamp = datetime.now(UTC)
    store.update_evaluation(evaluation_id, {"archived_at": stamp, "archived_by": principal.id})
    store.append_event(evaluation_id, "info", f"archived by {principal.id}")
    audit.record(store, principal, "archive", evaluation_id, {"name": doc.get("name"), "archived": True})
    return doc | {"archived_at": stamp, "archived_by": principal.id}


def restore_evaluation(store: Store, evaluation_id: str, principal: Principal) -> Doc:
    """Undo an archive: the evaluation shows in leaderboards again (admins)."""
    require(principal, "archive")
    doc = _settled(store, evaluation_id, "restore")
    if not is_archived(doc):
        return doc
    store.update_evaluation(evaluation_id, {"archived_at": None, "archived_by": None})
    store.append_event(evaluation_id, "info", f"restored from the archive by {principal.id}")
    audit.record(store, principal, "archive", evaluation_id, {"name": doc.get("name"), "archived": False})
    return doc | {"archived_at": None, "archived_by": None}


def evaluation_dump(store: Store, evaluation_id: str) -> dict[str, Any]:
    """Everything the store holds for one evaluation (datetimes as they are; `dump_json` writes them)."""
    data = evaluation_json(store, evaluation_id, include_messages=True)
    data["events"] = store.list_events(evaluation_id)
    data["verdicts"] = store.list_verdicts(evaluation_id)
    data["votes"] = store.list_votes(evaluation_id)
    return data


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def dump_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=_json_value) + "\n"


def default_export_path(evaluation_id: str) -> Path:
    """Where the dashboard writes a deleted evaluation's export: STORYBENCH_HOME/exports/<id>-<UTC time>.json."""
    from .paths import storybench_home

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return storybench_home() / "exports" / f"{evaluation_id}-{stamp}.json"


def export_then_delete(
    store: Store, evaluation_id: str, principal: Principal, export_path: str | Path
) -> Path:
    """Write the evaluation's full export to export_path, then delete it from the store (admins).

    Refuses an existing file (nothing is overwritten) and an evaluation still queued or running.
    """
    require(principal, "delete")
    doc = _settled(store, evaluation_id, "delete")
    path = Path(export_path).expanduser()
    if path.exists():
        raise StorybenchError(f"{path} already exists; choose a new file for the export of {evaluation_id}")
    data = evaluation_dump(store, evaluation_id)
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(dump_json(data), encoding="utf-8")
        if json.loads(partial.read_text(encoding="utf-8"))["evaluation"]["id"] != evaluation_id:
            raise StorybenchError(f"the export {partial} does not read back; nothing was deleted")
        os.replace(partial, path)
    except OSError as exc:
        raise StorybenchError(f"cannot write the export {path}: {exc}; nothing was deleted") from exc
    finally:
        partial.unlink(missing_ok=True)
    store.delete_evaluation(evaluation_id)
    details = {
        "name": doc.get("name"),
        "export": str(path.resolve()),
        "responses": len(data["responses"]),
        "judgements": sum(len(r["judgements"]) for r in data["responses"]),
    }
    audit.record(store, principal, "delete", evaluation_id, details)
    return path
