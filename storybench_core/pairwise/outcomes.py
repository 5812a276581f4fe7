"""Verdicts to outcomes: both orders combined, human votes, position bias."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from ..store.base import Doc, Store
from .pairs import HUMAN, MARGIN

# --- combining orders, outcomes, position bias -----------------------------------------------


def verdict_margin(verdict: Doc, group: str | None = None) -> float:
    """A valid verdict's margin for the text shown first (A): +3 … −3; one group or the mean of all."""
    labels = verdict.get("groups") or {}
    if group is not None:
        return float(MARGIN[labels[group]])
    return float(np.mean([MARGIN[v] for v in labels.values()]))


def _latest_valid(verdicts: Iterable[Doc]) -> dict[tuple[str, str, str], Doc]:
    """(judge, pair_key, order) → the valid verdict with the highest attempt."""
    chosen: dict[tuple[str, str, str], Doc] = {}
    for v in verdicts:
        if v.get("error") or not v.get("groups"):
            continue
        key = (v["judge"], v["pair_key"], v["order"])
        if key not in chosen or int(v.get("attempt") or 1) > int(chosen[key].get("attempt") or 1):
            chosen[key] = v
    return chosen


def combine_orders(verdicts: Iterable[Doc], group: str | None = None) -> pd.DataFrame:
    """One row per (judge, pair) judged validly in both orders: margins from model 1's side, and their mean.

    Columns: judge, pair_key, model_1, model_2, sequence, run, prompt_index,
    margin_12, margin_21, margin (their mean, −3…+3), consistent (both orders
    prefer the same model, or both tie).
    """
    columns = ["judge", "pair_key", "model_1", "model_2", "sequence", "run", "prompt_index",
               "margin_12", "margin_21", "margin", "consistent"]  # fmt: skip
    chosen = _latest_valid(verdicts)
    rows = []
    for (judge, pair_key, order), first in chosen.items():
        if order != "12" or (judge, pair_key, "21") not in chosen:
            continue
        second = chosen[(judge, pair_key, "21")]
        m12 = verdict_margin(first, group)
        m21 = -verdict_margin(second, group)  # model 1 was shown as B
        rows.append(
            {
                "judge": judge,
                "pair_key": pair_key,
                "model_1": first["model_1"],
                "model_2": first["model_2"],
                "sequence": first.get("sequence"),
                "run": first.get("run"),
                "prompt_index": first.get("prompt_index"),
                "margin_12": m12,
                "margin_21": m21,
                "margin": (m12 + m21) / 2,
                "consistent": bool(np.sign(m12) == np.sign(m21)),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def _score(margin: float, margin_weighted: bool) -> float:
    if margin_weighted:
        return 0.5 + margin / 6.0
    return 1.0 if margin > 0 else 0.0 if margin < 0 else 0.5


def verdict_outcomes(
    verdicts: Iterable[Doc], group: str | None = None, *, margin_weighted: bool = False
) -> pd.DataFrame:
    """Rating outcomes from judge verdicts: one per (judge, pair) with both orders valid.

    score_a is model_1's share: 1 / 0.5 / 0 by the sign of the combined margin,
    or 0.5 + margin/6 when margin_weighted. Columns: judge, pair_key, model_a,
    model_b, score_a, weight, margin.
    """
    combined = combine_orders(verdicts, group)
    return pd.DataFrame(
        {
            "judge": combined["judge"],
            "pair_key": combined["pair_key"],
            "model_a": combined["model_1"],
            "model_b": combined["model_2"],
            "score_a": [_score(m, margin_weighted) for m in combined["margin"]],
            "weight": 1.0,
            "margin": combined["margin"],
        }
    )


def vote_outcomes(votes: Iterable[Doc], judge: str = HUMAN) -> pd.DataFrame:
    """Rating outcomes from human votes (each vote one outcome), in the same model_1/model_2 orientation."""
    rows = []
    for v in votes:
        choice = v.get("choice")
        if choice not in ("A", "B", "tie") or not v.get("model_1"):
            continue
        shown_first = v.get("model_a")
        a_share = {"A": 1.0, "B": 0.0, "tie": 0.5}[choice]
        score = a_share if shown_first == v["model_1"] else 1.0 - a_share
        rows.append(
            {
                "judge": judge,
                "pair_key": v["pair_key"],
                "model_a": v["model_1"],
                "model_b": v["model_2"],
                "score_a": score,
                "weight": 1.0,
                "margin": (score - 0.5) * 2,
            }
        )
    return pd.DataFrame(
        rows, columns=["judge", "pair_key", "model_a", "model_b", "score_a", "weight", "margin"]
    )


def position_bias(verdicts: Iterable[Doc]) -> pd.DataFrame:
    """Per judge: how often the text shown first wins, and how often swapping the order changes the verdict.

    first_win_rate = first wins / (first wins + second wins), ties left out
    (0.5 means no position bias). consistent_rate: share of pairs judged in both
    orders whose two verdicts prefer the same model (or both tie).
    """
    docs = list(verdicts)
    columns = ["judge", "verdicts", "failed", "first_wins", "second_wins", "ties", "first_win_rate",
               "pairs_both_orders", "consistent_rate"]  # fmt: skip
    combined = combine_orders(docs)
    rows = []
    for judge in sorted({d["judge"] for d in docs}):
        own = [d for d in docs if d["judge"] == judge]
        valid = [d for d in own if not d.get("error") and d.get("groups")]
        margins = [verdict_margin(d) for d in valid]
        first = sum(m > 0 for m in margins)
        second = sum(m < 0 for m in margins)
        pairs = combined[combined["judge"] == judge]
        rows.append(
            {
                "judge": judge,
                "verdicts": len(own),
                "failed": len(own) - len(valid),
                "first_wins": first,
                "second_wins": second,
                "ties": len(margins) - first - second,
                "first_win_rate": first / (first + second) if first + second else float("nan"),
                "pairs_both_orders": len(pairs),
                "consistent_rate": float(pairs["consistent"].mean()) if len(pairs) else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def all_outcomes(store: Store, scope: str, *, margin_weighted: bool = False) -> pd.DataFrame:
    """Every judge's verdict outcomes plus the human votes (judge 'human') filed under a scope."""
    judged = verdict_outcomes(store.list_verdicts(scope), margin_weighted=margin_weighted)
    voted = vote_outcomes(store.list_votes(scope))
    frames = [f for f in (judged, voted) if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else judged
