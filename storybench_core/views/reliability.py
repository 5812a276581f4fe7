"""Beside every ranking: the reliability card of the judge that produced it, and its warning.

The Results page (and `storybench leaderboard`) ask `judge_cards` for the judges whose scores
they show; a judge without a card is marked "not calibrated", one whose card says it cannot
order a degraded ladder gets a warning naming what it failed, and its rankings are flagged.
With several judges, `ensemble` weights each judge's model means by its measured reliability.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from ..calibration import CANNOT, SEPARATES, CardView, card_for
from ..calibration.cards import card_lines
from ..config import ModelSpec, RunConfig
from ..store.base import Store

BUILTIN_KINDS = frozenset({"bundled"})

SMALL_JUDGE_NOTE = (
    "The built-in models (Gemma 3 270M, SmolLM2 135M) are far too small to judge fiction: they exercise "
    "the judging code, but their scores say little about the stories. Point a real judge at this "
    "evaluation — a larger local GGUF (Configure → Judge → Hugging Face file or a GGUF on disk) or an "
    "API endpoint — and run Calibrate judge to see how far it can be trusted."
)


@dataclass(frozen=True)
class JudgeCard:
    """One judge's card as shown beside a ranking."""

    judge: str
    view: CardView
    flag: str  # "trusted" | "weak" | "failed" | "uncalibrated"
    headline: str
    warning: str | None
    rows: list[tuple[str, str]]

    @property
    def weight(self) -> float:
        """The judge's weight in an ensemble: its Kendall τ (at least 0); an uncalibrated judge 0.5."""
        card = self.view.card
        if card is None:
            return 0.5
        tau = card.get("kendall_tau")
        return max(0.0, float(tau)) if tau is not None else 0.0


def judge_card(store: Store, judge: str, identity_key: str | None = None) -> JudgeCard:
    view = card_for(store, judge, identity_key)
    if not view.calibrated:
        return JudgeCard(
            judge,
            view,
            "uncalibrated",
            f"Judge {judge} has not been calibrated: nothing yet says how far its scores can be trusted.",
            None,
            [],
        )
    card = view.card or {}
    reasons = [str(r) for r in card.get("reasons") or []]
    if view.verdict == SEPARATES:
        flag, warning = "trusted", None
    elif view.verdict == CANNOT:
        flag = "failed"
        warning = (
            f"Judge {judge} cannot order a degraded ladder: "
            + ("; ".join(reasons) if reasons else "its scores did not follow a known order")
            + ". Rankings from this judge are not evidence of quality."
        )
    else:
        flag = "weak"
        warning = (
            f"Judge {judge} is weak: "
            + ("; ".join(reasons) or "it only partly followed the known order")
            + "."
        )
    accuracy = card.get("ladder_accuracy")
    headline = f"Judge {judge}: {view.verdict}" + (
        f" (ladder accuracy {float(accuracy):.0%}, τ {card.get('kendall_tau')})"
        if accuracy is not None
        else ""
    )
    return JudgeCard(judge, view, flag, headline, warning, card_lines(view))


def judge_cards(store: Store, judges: Iterable[str], config: RunConfig | None = None) -> list[JudgeCard]:
    """A card per judge name (in the given order, each once)."""
    seen: list[str] = []
    for name in judges:
        if name and name not in seen:
            seen.append(name)
    return [judge_card(store, name) for name in seen]


def small_judge_note(config: RunConfig | None, judges: Sequence[str] = ()) -> str | None:
    """The plain statement of the built-in judge's limits, when nothing better is configured."""
    specs: list[ModelSpec] = list(config.judge.judges()) if config is not None else []
    if specs and all(s.kind in BUILTIN_KINDS for s in specs):
        return SMALL_JUDGE_NOTE
    if not specs and any("bundled" in j for j in judges):
        return SMALL_JUDGE_NOTE
    return None


def ensemble(board: pd.DataFrame, cards: Sequence[JudgeCard]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Models ranked by the judges' means weighted by reliability, and the weights used.

    `board` has one row per (judge_model, model_name) with a `mean` column. None with fewer than
    two judges, or when every weight is 0 (no judge could order a ladder: no ensemble to trust).
    """
    if board.empty or board["judge_model"].nunique() < 2:
        return None
    weights = {c.judge: c.weight for c in cards}
    frame = board.assign(weight=board["judge_model"].map(weights).fillna(0.5))
    if float(frame["weight"].sum()) == 0.0:
        return None
    frame = frame.assign(weighted=frame["mean"] * frame["weight"])
    grouped = frame.groupby("model_name", sort=True)
    ranked = pd.DataFrame(
        {"ensemble_mean": grouped["weighted"].sum() / grouped["weight"].sum().where(lambda w: w > 0)}
    ).dropna()
    ranked = ranked.sort_values("ensemble_mean", ascending=False).reset_index()
    ranked.insert(0, "rank", range(1, len(ranked) + 1))
    used = pd.DataFrame(
        [
            {"judge": c.judge, "weight": round(c.weight, 3), "verdict": c.view.verdict or "not calibrated"}
            for c in cards
        ]
    )
    return ranked, used
