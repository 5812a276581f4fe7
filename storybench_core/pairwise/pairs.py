"""Pairs: two models' responses to the same brief, the constants and labels."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from ..store.base import Doc, Store

LABELS = ("A+++", "A++", "A+", "tie", "B+", "B++", "B+++")
MARGIN = {"A+++": 3, "A++": 2, "A+": 1, "tie": 0, "B+": -1, "B++": -2, "B+++": -3}
ORDERS = ("12", "21")  # "12": model 1 shown as A; "21": model 2 shown as A
HUMAN = "human"

DEFAULT_BUDGET_CHARS = 3000
DEFAULT_MAX_TOKENS = 160
DEFAULT_CALL_BUDGET = 40
MIN_COMPARISONS = 4  # per model, before its interval is trusted to stop judging
MAX_FAILURES_IN_A_ROW = 6  # then the judge is broken (context, schema, endpoint): stop spending calls
REASON_MAX_CHARS = 160
RAW_KEEP_CHARS = 8000


@dataclass(frozen=True)
class CriterionGroup:
    """A group of rubric criteria the judge decides on as one."""

    id: str
    description: str


DEFAULT_GROUPS = (
    CriterionGroup("story", "the idea and what it means: originality, surprise, depth of concept and theme"),
    CriterionGroup("craft", "the writing: coherence, dialogue, characters who feel alive and consistent"),
    CriterionGroup("imagery", "visual imagination: concrete, specific, vivid pictures a reader can see"),
)


def now_utc() -> datetime:
    return datetime.now(UTC)


# --- pairs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """Two models' responses to the same brief; model_1 < model_2 by name (the canonical order)."""

    pair_key: str
    scope: str
    sequence: str
    run: int
    prompt_index: int
    model_1: str
    model_2: str
    response_1: str
    response_2: str

    def shown(self, order: str) -> tuple[str, str, str, str]:
        """(model_a, model_b, response_a, response_b) as shown in this order."""
        if order == "12":
            return self.model_1, self.model_2, self.response_1, self.response_2
        return self.model_2, self.model_1, self.response_2, self.response_1

    @property
    def models(self) -> tuple[str, str]:
        return self.model_1, self.model_2


def scope_id(evaluation_ids: str | Iterable[str]) -> str:
    """Where verdicts and votes of a comparison are filed: the evaluation id, or the ids joined by '+'."""
    ids = [evaluation_ids] if isinstance(evaluation_ids, str) else sorted(set(evaluation_ids))
    return "+".join(ids)


def make_pair_key(response_1: str, response_2: str) -> str:
    """Opaque and order-free: the same two responses always give the same key."""
    first, second = sorted((response_1, response_2))
    return hashlib.sha256(f"{first}|{second}".encode()).hexdigest()[:24]


def contestant_names(responses: Iterable[Doc]) -> dict[tuple[str, str], str]:
    """(evaluation_id, model_name) → the name used in ratings; qualified by evaluation only when needed."""
    seen: dict[str, set[str]] = {}
    for r in responses:
        seen.setdefault(r["model_name"], set()).add(r["evaluation_id"])
    names = {}
    for model, evals in seen.items():
        for eid in evals:
            names[(eid, model)] = model if len(evals) == 1 else f"{model} [{eid}]"
    return names


def build_pairs(responses: Iterable[Doc], scope: str) -> list[Pair]:
    """Every pair of models answering the same (sequence, run, prompt index, prompt text); failures left out."""
    docs = [r for r in responses if not r.get("error")]
    names = contestant_names(docs)
    slots: dict[tuple[str, int, int, str], dict[str, Doc]] = {}
    for r in docs:
        slot = (r["sequence"], int(r["run"]), int(r["prompt_index"]), str(r.get("prompt_text") or ""))
        slots.setdefault(slot, {})[names[(r["evaluation_id"], r["model_name"])]] = r
    pairs = []
    for (sequence, run, prompt_index, _text), by_model in sorted(slots.items()):
        models = sorted(by_model)
        for i, m1 in enumerate(models):
            for m2 in models[i + 1 :]:
                r1, r2 = by_model[m1]["id"], by_model[m2]["id"]
                pairs.append(Pair(make_pair_key(r1, r2), scope, sequence, run, prompt_index, m1, m2, r1, r2))
    return pairs


def load_responses(store: Store, evaluation_ids: str | Iterable[str]) -> dict[str, Doc]:
    """Successful responses (with their messages) of one or more evaluations, by id."""
    ids = [evaluation_ids] if isinstance(evaluation_ids, str) else list(evaluation_ids)
    return {r["id"]: r for eid in ids for r in store.list_responses(eid) if not r.get("error")}


def pairs_for(store: Store, evaluation_ids: str | Iterable[str]) -> list[Pair]:
    """All candidate pairs of one evaluation (or across several)."""
    return build_pairs(load_responses(store, evaluation_ids).values(), scope_id(evaluation_ids))
