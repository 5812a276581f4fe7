"""Reliability cards: filed under the judge's identity, found again for every ranking it made.

A judge's identity is what its scores depend on: for a local GGUF the file's sha256, for an API
model its endpoint and model id, plus the rubric's hash (a changed rubric is a different judge).
The card itself is the result of a completed `calibrate` job (job_kinds.py), so it lives in the
store beside everything else and is shared by every viewer and every later evaluation.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths
from ..backends.base import ModelBackend
from ..catalog import Rubric
from ..config import ModelSpec
from ..store.base import Doc, Store

_HASH_CACHE = "file-hashes.json"


def file_sha256(path: Path) -> str:
    """sha256 of a model file, cached by (path, size, mtime) under STORYBENCH_HOME."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_path = paths.storybench_home() / "cache" / _HASH_CACHE
    try:
        cache: dict[str, str] = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    cache[key] = digest.hexdigest()
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_text(json.dumps(cache), encoding="utf-8")
    except OSError:
        pass  # a cache only
    return cache[key]


def judge_identity(spec: ModelSpec | None, backend: ModelBackend | None, rubric: Rubric) -> dict[str, Any]:
    """{kind, id, rubric_hash, key}: the same judge gives the same key on any evaluation."""
    kind = spec.kind if spec is not None else "scripted"
    model_path = getattr(backend, "model_path", None)
    if isinstance(model_path, Path) and model_path.is_file():
        ident = f"sha256:{file_sha256(model_path)}"
    elif spec is not None and spec.kind == "api":
        ident = f"api:{spec.base_url}|{spec.api_model}"
    else:
        ident = f"{kind}:{spec.display_name if spec is not None else getattr(backend, 'name', 'judge')}"
    key = hashlib.sha256(f"{ident}|{rubric.rubric_hash}".encode()).hexdigest()[:16]
    return {"kind": kind, "id": ident, "rubric_hash": rubric.rubric_hash, "key": key}


@dataclass(frozen=True)
class CardView:
    """A judge's card as the Results page and the CLI show it."""

    judge: str
    verdict: str | None  # None: not calibrated
    card: dict[str, Any] | None
    job_id: str | None

    @property
    def calibrated(self) -> bool:
        return self.card is not None

    @property
    def trusted(self) -> bool:
        return self.verdict == "separates"


def calibration_cards(store: Store) -> list[Doc]:
    """Every completed calibration result, newest first."""
    return [
        j["result"] | {"job_id": j["id"], "finished_at": j.get("finished_at")}
        for j in store.list_jobs(statuses=["completed"])
        if j.get("kind") == "calibrate" and isinstance(j.get("result"), dict)
    ]


def card_for(store: Store, judge_name: str, identity_key: str | None = None) -> CardView:
    """The newest card of a judge: by identity when known, else by the judge's display name."""
    for card in calibration_cards(store):
        same = (identity_key is not None and (card.get("identity") or {}).get("key") == identity_key) or (
            identity_key is None and card.get("judge") == judge_name
        )
        if same:
            return CardView(judge_name, str(card.get("verdict")), card, str(card.get("job_id")))
    return CardView(judge_name, None, None, None)


def card_lines(view: CardView) -> list[tuple[str, str]]:
    """(figure, value) rows of a card, in the README's order."""
    card = view.card
    if card is None:
        return []

    def pct(value: Any) -> str:
        return "–" if value is None else f"{float(value):.0%}"

    def num(value: Any) -> str:
        return "–" if value is None else f"{float(value):.2f}"

    rows = [
        ("Verdict", str(card.get("verdict"))),
        (
            "Ladders × rungs × attempts",
            f"{card.get('ladders')} × {card.get('rungs')} × {card.get('attempts')}",
        ),
        ("Ladder accuracy (adjacent rungs ordered right)", pct(card.get("ladder_accuracy"))),
        ("Kendall τ against the known order", num(card.get("kendall_tau"))),
        ("Separability (adjacent rungs' intervals apart)", pct(card.get("separability"))),
        (
            "Test–retest (mean |attempt − mean|, identical share)",
            f"{num(card.get('retest_mean_abs_diff'))}, {pct(card.get('retest_identical_share'))}"
            if card.get("retested")
            else "not retested",
        ),
        ("Pairwise accuracy (better rung preferred)", pct(card.get("pairwise_accuracy"))),
        ("Position flips (pick changes when the texts swap)", pct(card.get("position_flip_rate"))),
        ("First-position preference", pct(card.get("first_position_preference"))),
        ("Failed calibration judgements", f"{card.get('failed_judgements')} of {card.get('judgements')}"),
    ]
    for check in card.get("criterion_checks") or []:
        rows.append((f"{check['transform']} lowers {check['criterion']} first", pct(check.get("share"))))
    if card.get("self_preference") is not None:
        rows.append(("Self-preference (own responses − others)", num(card.get("self_preference"))))
    if card.get("family_preference") is not None:
        rows.append(("Family preference (same model family − others)", num(card.get("family_preference"))))
    if card.get("vote_agreement") is not None:
        rows.append(
            (
                f"Agreement with the team's votes ({card.get('vote_pairs')} pairs)",
                pct(card.get("vote_agreement")),
            )
        )
    return rows
