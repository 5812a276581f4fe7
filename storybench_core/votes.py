"""Team A/B votes: people pick the better of two anonymised responses, one pair at a time.

`next_pair_for` offers a voter the pair whose outcome is least certain and
that this voter has not voted on (in any session: the store remembers). The
`PairView` it returns carries the texts but no model names; `record_vote`
looks the models up and stores them with the vote; `reveal` answers only
once the voter's vote is stored. The store's unique (voter, pair_key) index
makes a double submit (two tabs, a double click) store one vote, whatever the
timing. Votes feed the ratings as a separate judge, "human" (the pairwise package).

A vote belongs to the acting principal: a signed-in person votes as their
identity (one vote per person per pair, whatever they type); only the
single-user local install names its voters by a typed name. Each stored vote
is recorded in the audit trail, without its choice.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal
from uuid import uuid4

import pandas as pd

from . import audit
from .access import Principal, require
from .errors import DuplicateError, StorybenchError
from .pairwise import HUMAN, Pair, all_outcomes, build_pairs, earlier_briefs, load_responses
from .ratings import fit_ratings, win_probability
from .store.base import Doc, Store

Choice = Literal["A", "B", "tie"]
CHOICES: tuple[str, ...] = ("A", "B", "tie")
VOTER_MAX_CHARS = 80
NOTE_MAX_CHARS = 2000


@dataclass(frozen=True)
class PairView:
    """What a voter sees of a pair: the brief, the briefs before it, and two unnamed texts."""

    pair_key: str
    scope: str
    sequence: str
    run: int
    prompt_index: int
    prompt_name: str
    prompt_text: str
    briefs_before: tuple[str, ...]
    text_a: str
    text_b: str
    # Each side's own earlier answers (the conversation it continued), oldest first.
    earlier_a: tuple[str, ...]
    earlier_b: tuple[str, ...]
    response_a: str  # ids only: the models are looked up after the vote
    response_b: str

    @property
    def turn(self) -> int:
        return self.prompt_index + 1


@dataclass(frozen=True)
class Reveal:
    """Who wrote what, shown after the vote."""

    model_a: str
    model_b: str
    choice: str
    note: str

    @property
    def winner(self) -> str | None:
        return {"A": self.model_a, "B": self.model_b}.get(self.choice)


@dataclass(frozen=True)
class VoteResult:
    vote: Doc
    stored: bool  # False: this voter had already voted on the pair (the earlier vote is returned)


def clean_voter(voter: str) -> str:
    """A voter name, trimmed; StorybenchError when empty or too long."""
    name = " ".join(str(voter or "").split())
    if not name:
        raise StorybenchError("a vote needs the voter's name: type it once at the top of the Vote page")
    if len(name) > VOTER_MAX_CHARS:
        raise StorybenchError(f"the voter name is {len(name)} characters; use at most {VOTER_MAX_CHARS}")
    return name


def voter_id(principal: Principal, typed_name: str | None = None) -> str | None:
    """Whose vote this is: a signed-in principal's id; on a local install the typed name (None if none)."""
    if principal.source != "local":
        return principal.id
    return clean_voter(typed_name) if typed_name and typed_name.strip() else None


def _hash(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("|".join(parts).encode()).digest()[:8], "big")


def shown_order(voter: str, pair_key: str) -> str:
    """Which model a voter sees first ("12" or "21"): fixed per voter and pair, balanced across voters."""
    return "12" if _hash(voter, pair_key, "order") % 2 == 0 else "21"


def _answers_before(doc: Doc) -> tuple[str, ...]:
    msgs = [m for m in doc.get("messages") or [] if m.get("role") == "assistant"]
    return tuple(str(m.get("content") or "") for m in msgs)


def _view(pair: Pair, order: str, responses: dict[str, Doc]) -> PairView:
    _ma, _mb, rid_a, rid_b = pair.shown(order)
    doc_a, doc_b = responses[rid_a], responses[rid_b]
    return PairView(
        pair_key=pair.pair_key,
        scope=pair.scope,
        sequence=pair.sequence,
        run=pair.run,
        prompt_index=pair.prompt_index,
        prompt_name=str(doc_a.get("prompt_name") or ""),
        prompt_text=str(doc_a.get("prompt_text") or ""),
        briefs_before=tuple(earlier_briefs(doc_a)),
        text_a=str(doc_a.get("response") or ""),
        text_b=str(doc_b.get("response") or ""),
        earlier_a=_answers_before(doc_a),
        earlier_b=_answers_before(doc_b),
        response_a=rid_a,
        response_b=rid_b,
    )


def uncertainty(pairs: list[Pair], outcomes: pd.DataFrame, votes: list[Doc]) -> dict[str, float]:
    """Per pair_key, how open its outcome still is (1 = a coin toss, 0 = settled).

    Three pieces of evidence, multiplied: the models' ratings so far (judges and
    humans pooled; 1 − |2p − 1|), the judges' combined margin on this very pair
    when it was judged (1 − |margin| / 3), and 1 / (1 + votes already cast on it).
    """
    ratings = fit_ratings(outcomes, n_boot=0) if not outcomes.empty else pd.DataFrame(columns=["model"])
    rating = ratings.set_index("model")["rating"] if not ratings.empty else pd.Series(dtype=float)
    judged: dict[str, float] = {}
    if not outcomes.empty and "margin" in outcomes.columns:
        judges = outcomes[outcomes["judge"] != HUMAN]
        judged = judges.groupby("pair_key")["margin"].apply(lambda m: float(m.abs().mean())).to_dict()
    cast = Counter(v["pair_key"] for v in votes)
    out = {}
    for p in pairs:
        if p.model_1 in rating.index and p.model_2 in rating.index:
            prob = win_probability(float(rating[p.model_1]), float(rating[p.model_2]))
            model_open = 1.0 - abs(2.0 * prob - 1.0)
        else:
            model_open = 1.0
        pair_open = 1.0 - min(judged.get(p.pair_key, 0.0), 3.0) / 3.0
        out[p.pair_key] = model_open * pair_open / (1.0 + cast[p.pair_key])
    return out


def next_pair_for(store: Store, evaluation_id: str, voter: str) -> PairView | None:
    """The least certain pair this voter has not voted on yet, or None when none is left."""
    voter = clean_voter(voter)
    responses = load_responses(store, evaluation_id)
    pairs = build_pairs(responses.values(), evaluation_id)
    mine = {v["pair_key"] for v in store.list_votes(evaluation_id, voter=voter)}
    left = [p for p in pairs if p.pair_key not in mine]
    if not left:
        return None
    votes = store.list_votes(evaluation_id)
    openness = uncertainty(left, all_outcomes(store, evaluation_id), votes)
    # Among equally open pairs, a per-voter hash spreads concurrent voters over different pairs.
    best = max(left, key=lambda p: (round(openness[p.pair_key], 9), _hash(voter, p.pair_key)))
    return _view(best, shown_order(voter, best.pair_key), responses)


def _find_vote(store: Store, scope: str, voter: str, pair_key: str) -> Doc | None:
    return next((v for v in store.list_votes(scope, voter=voter) if v["pair_key"] == pair_key), None)


def record_vote(
    store: Store,
    principal: Principal,
    pair: PairView,
    choice: str,
    note: str = "",
    *,
    typed_name: str | None = None,
) -> VoteResult:
    """Store principal's vote (A, B or tie, optional note) with the models behind each side.

    A second vote by the same voter on the same pair is not stored: the first
    one is returned with stored=False (the store's unique index decides, so
    this holds for concurrent submits too). typed_name names the voter only on
    a local install (`voter_id`).
    """
    require(principal, "vote")
    voter = voter_id(principal, typed_name)
    if voter is None:
        raise StorybenchError("a vote needs the voter's name: type it once at the top of the Vote page")
    if choice not in CHOICES:
        raise StorybenchError(f"a vote is A, B or tie, not {choice!r}")
    doc_a, doc_b = store.get_response(pair.response_a), store.get_response(pair.response_b)
    if doc_a is None or doc_b is None:
        raise StorybenchError("this pair's responses were deleted meanwhile; take the next pair")
    model_a, model_b = str(doc_a["model_name"]), str(doc_b["model_name"])
    model_1, model_2 = sorted((model_a, model_b))
    vote: dict[str, Any] = {
        "id": uuid4().hex,
        "evaluation_id": pair.scope,
        "voter": voter,
        "voter_name": principal.name if principal.source != "local" else voter,
        "pair_key": pair.pair_key,
        "choice": choice,
        "note": str(note or "").strip()[:NOTE_MAX_CHARS],
        "model_a": model_a,
        "model_b": model_b,
        "model_1": model_1,
        "model_2": model_2,
        "response_a": pair.response_a,
        "response_b": pair.response_b,
        "sequence": pair.sequence,
        "run": pair.run,
        "prompt_index": pair.prompt_index,
    }
    try:
        store.add_vote(vote)
    except DuplicateError:
        earlier = _find_vote(store, pair.scope, voter, pair.pair_key)
        if earlier is None:
            raise
        return VoteResult(earlier, stored=False)
    audit.record(store, principal, "vote", pair.scope, {"pair_key": pair.pair_key, "voter": voter})
    return VoteResult(vote, stored=True)


def reveal(store: Store, pair: PairView, voter: str) -> Reveal:
    """The models behind A and B, once this voter's vote on the pair is stored."""
    vote = _find_vote(store, pair.scope, clean_voter(voter), pair.pair_key)
    if vote is None:
        raise StorybenchError("the models are shown after your vote: vote A, B or tie first")
    # The sides as this voter saw them now (the stored vote may come from another session's order).
    if vote["response_a"] == pair.response_a:
        model_a, model_b, choice = vote["model_a"], vote["model_b"], vote["choice"]
    else:
        model_a, model_b = vote["model_b"], vote["model_a"]
        choice = {"A": "B", "B": "A"}.get(vote["choice"], vote["choice"])
    return Reveal(model_a=model_a, model_b=model_b, choice=choice, note=str(vote.get("note") or ""))


def voting_progress(store: Store, evaluation_id: str, voter: str | None = None) -> dict[str, int]:
    """Pairs in the evaluation, votes cast (by everyone), and this voter's votes."""
    responses = store.list_responses(evaluation_id, include_messages=False)
    pairs = build_pairs(responses, evaluation_id)
    votes = store.list_votes(evaluation_id)
    mine = sum(1 for v in votes if voter and v["voter"] == voter)
    return {
        "pairs": len(pairs),
        "votes": len(votes),
        "voters": len({v["voter"] for v in votes}),
        "mine": mine,
    }


def votable_evaluations(store: Store, limit: int = 50) -> list[Doc]:
    """Evaluations (newest first, archived ones left out) where at least two models answered the same brief."""
    found = []
    for evaluation in store.list_evaluations(limit=limit):
        if evaluation.get("archived_at") is not None:
            continue
        responses = store.list_responses(evaluation["id"], include_messages=False)
        if build_pairs(responses, evaluation["id"]):
            found.append(evaluation)
    return found
