"""Ratings from pairwise outcomes: a Bradley–Terry fit with bootstrap intervals, agreement, turn trends.

An *outcome* is one comparison of two models: `score_a` is model_a's share of
the win (1 win, 0.5 tie, 0 loss; fractions allowed when margins weigh) and
`weight` how much it counts. `fit_ratings` fits Bradley–Terry strengths θ by
Newton's method on the log-likelihood plus a weak Gaussian prior (θ ~ N(0,
prior_sd²)), which keeps a model that won or lost everything finite, and
reports them on an Elo-like scale: 1000 + 400·θ/ln 10, so a 400-point gap
means 10:1 odds. The 95% interval is a percentile bootstrap over outcomes.

Pure pandas / numpy: the documents-to-outcomes step lives in pairwise/outcomes.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .results import spearman

ELO_BASE = 1000.0
ELO_PER_NAT = 400.0 / math.log(10.0)
DEFAULT_PRIOR_SD = 2.0  # in natural-log strength units (≈ 350 Elo points)
OUTCOME_COLUMNS = ("model_a", "model_b", "score_a", "weight")
RATING_COLUMNS = ["rank", "model", "rating", "ci_low", "ci_high", "comparisons", "wins", "win_rate"]


# --- outcomes --------------------------------------------------------------------------------


def outcomes_frame(outcomes: pd.DataFrame | Iterable[Any]) -> pd.DataFrame:
    """Outcomes as a frame with model_a, model_b, score_a, weight (weight defaults to 1).

    Accepts a frame with at least model_a, model_b, score_a, or an iterable of
    (model_a, model_b, score_a[, weight]) tuples.
    """
    if isinstance(outcomes, pd.DataFrame):
        frame = outcomes.copy()
    else:
        rows = [tuple(o) for o in outcomes]
        width = max((len(r) for r in rows), default=3)
        frame = pd.DataFrame(rows, columns=list(OUTCOME_COLUMNS[:width]))
    for col in ("model_a", "model_b", "score_a"):
        if col not in frame.columns:
            frame[col] = pd.Series(dtype=object if col != "score_a" else float)
    if "weight" not in frame.columns:
        frame["weight"] = 1.0
    frame["score_a"] = pd.to_numeric(frame["score_a"], errors="coerce").astype(float)
    frame["weight"] = pd.to_numeric(frame["weight"], errors="coerce").astype(float)
    keep = frame["score_a"].between(0.0, 1.0) & (frame["weight"] > 0) & (frame["model_a"] != frame["model_b"])
    return frame[keep].reset_index(drop=True)


# --- the fit ---------------------------------------------------------------------------------


def _aggregate(
    a: np.ndarray, b: np.ndarray, score: np.ndarray, weight: np.ndarray, n_models: int
) -> tuple[np.ndarray, np.ndarray]:
    """Wins matrix W (W[i, j] = i's weighted score against j) and games matrix N (symmetric)."""
    wins = np.zeros(n_models * n_models)
    games = np.zeros(n_models * n_models)
    np.add.at(wins, a * n_models + b, weight * score)
    np.add.at(wins, b * n_models + a, weight * (1.0 - score))
    np.add.at(games, a * n_models + b, weight)
    np.add.at(games, b * n_models + a, weight)
    return wins.reshape(n_models, n_models), games.reshape(n_models, n_models)


def _newton(
    wins: np.ndarray, games: np.ndarray, lam: float, start: np.ndarray | None = None, max_iter: int = 100
) -> np.ndarray:
    """Maximise Σ W_ij θ_i − N_ij log(1+e^{θ_i−θ_j}) over pairs − λ/2 Σ θ² (centred when λ = 0)."""
    n = len(wins)
    theta = np.zeros(n) if start is None else start.copy()
    row_wins = wins.sum(axis=1)
    for _ in range(max_iter):
        diff = theta[:, None] - theta[None, :]
        p = 1.0 / (1.0 + np.exp(-diff))
        grad = row_wins - (games * p).sum(axis=1) - lam * theta
        info = games * p * (1.0 - p)
        hess = info - np.diag(info.sum(axis=1) + lam)  # negative (semi)definite
        # Without a prior the Hessian is singular (adding a constant to every θ changes nothing).
        step = np.linalg.solve(hess, grad) if lam > 0 else np.linalg.lstsq(hess, grad, rcond=None)[0]
        step = np.clip(step, -5.0, 5.0)
        theta = np.clip(theta - step, -30.0, 30.0)
        if lam == 0:
            theta -= theta.mean()
        if np.max(np.abs(step)) < 1e-10:
            break
    return theta


def bradley_terry(
    outcomes: pd.DataFrame | Iterable[Any], prior_sd: float | None = DEFAULT_PRIOR_SD
) -> dict[str, float]:
    """Strengths θ (natural-log odds scale, mean 0 without a prior) by model.

    prior_sd=None is the plain maximum-likelihood fit: it needs a connected
    comparison graph without a model that won (or lost) every game.
    """
    frame = outcomes_frame(outcomes)
    models = sorted(set(frame["model_a"]) | set(frame["model_b"]))
    if not models:
        return {}
    index = {m: i for i, m in enumerate(models)}
    a = frame["model_a"].map(index).to_numpy(dtype=np.int64)
    b = frame["model_b"].map(index).to_numpy(dtype=np.int64)
    wins, games = _aggregate(a, b, frame["score_a"].to_numpy(), frame["weight"].to_numpy(), len(models))
    theta = _newton(wins, games, _lambda(prior_sd))
    return dict(zip(models, theta.tolist(), strict=True))


def _lambda(prior_sd: float | None) -> float:
    return 0.0 if prior_sd is None else 1.0 / (prior_sd * prior_sd)


def to_elo(theta: float | np.ndarray) -> float | np.ndarray:
    """Natural-log Bradley–Terry strength → Elo-like rating (mean 1000)."""
    return ELO_BASE + ELO_PER_NAT * theta


def win_probability(rating_a: float, rating_b: float) -> float:
    """P(a beats b) under the Elo-like scale."""
    return 1.0 / (1.0 + 10.0 ** ((rating_b - rating_a) / 400.0))


def fit_ratings(
    outcomes: pd.DataFrame | Iterable[Any],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    prior_sd: float | None = DEFAULT_PRIOR_SD,
    level: float = 0.95,
) -> pd.DataFrame:
    """Bradley–Terry ratings with percentile-bootstrap intervals over the outcomes.

    Columns: rank, model, rating (Elo-like, mean 1000), ci_low, ci_high,
    comparisons (outcomes involving the model), wins (its weighted score), win_rate.
    n_boot=0 skips the bootstrap (ci_low/ci_high NaN).
    """
    frame = outcomes_frame(outcomes)
    models = sorted(set(frame["model_a"]) | set(frame["model_b"]))
    if not models:
        return pd.DataFrame(columns=RATING_COLUMNS)
    index = {m: i for i, m in enumerate(models)}
    n = len(models)
    a = frame["model_a"].map(index).to_numpy(dtype=np.int64)
    b = frame["model_b"].map(index).to_numpy(dtype=np.int64)
    score = frame["score_a"].to_numpy()
    weight = frame["weight"].to_numpy()
    lam = _lambda(prior_sd)
    wins, games = _aggregate(a, b, score, weight, n)
    theta = _newton(wins, games, lam)
    low = np.full(n, np.nan)
    high = np.full(n, np.nan)
    if n_boot > 0 and len(frame) > 0:
        rng = np.random.default_rng(seed)
        # Resampling outcomes with replacement = multinomial counts per outcome.
        counts = rng.multinomial(len(frame), np.full(len(frame), 1.0 / len(frame)), size=n_boot)
        draws = np.empty((n_boot, n))
        for k in range(n_boot):
            w_k, g_k = _aggregate(a, b, score, weight * counts[k], n)
            draws[k] = _newton(w_k, g_k, max(lam, 1e-6), start=theta, max_iter=50)
            if lam == 0:
                draws[k] -= draws[k].mean()
        tail = (1.0 - level) / 2.0
        low, high = np.quantile(draws, [tail, 1.0 - tail], axis=0)
    comparisons = np.bincount(a, minlength=n) + np.bincount(b, minlength=n)
    won = wins.sum(axis=1)
    out = pd.DataFrame(
        {
            "model": models,
            "rating": to_elo(theta),
            "ci_low": to_elo(low),
            "ci_high": to_elo(high),
            "comparisons": comparisons.astype(int),
            "wins": won,
            "win_rate": np.divide(
                won, games.sum(axis=1), out=np.full(n, np.nan), where=games.sum(axis=1) > 0
            ),
        }
    )
    out = out.sort_values(["rating", "model"], ascending=[False, True]).reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, n + 1))
    return out[RATING_COLUMNS]


def intervals_overlap(ratings: pd.DataFrame, model_a: str, model_b: str) -> bool:
    """True when the two models' intervals overlap (or either has none yet)."""
    rows = ratings.set_index("model")
    if model_a not in rows.index or model_b not in rows.index:
        return True
    lo_a, hi_a = rows.at[model_a, "ci_low"], rows.at[model_a, "ci_high"]
    lo_b, hi_b = rows.at[model_b, "ci_low"], rows.at[model_b, "ci_high"]
    if any(pd.isna(v) for v in (lo_a, hi_a, lo_b, hi_b)):
        return True
    return bool(lo_a <= hi_b and lo_b <= hi_a)


# --- agreement -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankAgreement:
    """How far two rankings of the same models agree."""

    spearman: float
    n_models: int
    table: pd.DataFrame  # model, pairwise_rating, pairwise_rank, rubric_overall, rubric_rank


def _model_column(frame: pd.DataFrame) -> str:
    return "model" if "model" in frame.columns else "model_name"


def rank_agreement(rating_frame: pd.DataFrame, rubric_leaderboard: pd.DataFrame) -> RankAgreement:
    """Spearman ρ between pairwise ratings and the rubric leaderboard's overall score, over shared models."""
    left = rating_frame[[_model_column(rating_frame), "rating"]].set_axis(
        ["model", "pairwise_rating"], axis=1
    )
    right = rubric_leaderboard[[_model_column(rubric_leaderboard), "overall"]].set_axis(
        ["model", "rubric_overall"], axis=1
    )
    table = left.merge(right, on="model", how="inner").dropna()
    table["pairwise_rank"] = table["pairwise_rating"].rank(ascending=False, method="min").astype(int)
    table["rubric_rank"] = table["rubric_overall"].rank(ascending=False, method="min").astype(int)
    table = table.sort_values("pairwise_rank").reset_index(drop=True)
    rho = spearman(table["pairwise_rating"], table["rubric_overall"])
    cols = ["model", "pairwise_rating", "pairwise_rank", "rubric_overall", "rubric_rank"]
    return RankAgreement(spearman=rho, n_models=len(table), table=table[cols])


def _winner_class(score: pd.Series) -> pd.Series:
    """+1 model_a preferred, −1 model_b preferred, 0 tie."""
    return np.sign(score - 0.5).astype(int)


def human_judge_agreement(outcomes: pd.DataFrame, human: str = "human") -> pd.DataFrame:
    """Per judge: on pairs both it and the humans decided, how often they pick the same winner.

    `outcomes` needs columns judge, pair_key, model_a, model_b, score_a with each
    pair in one orientation (pairwise/outcomes.py writes model_a < model_b). Humans' votes
    on a pair are averaged first. Columns: judge, n_pairs, agree_pct (ties must
    match ties), spearman (ratings fitted on each side alone), n_models.
    """
    columns = ["judge", "n_pairs", "agree_pct", "spearman", "n_models"]
    if outcomes.empty or "judge" not in outcomes.columns:
        return pd.DataFrame(columns=columns)
    people = outcomes[outcomes["judge"] == human]
    if people.empty:
        return pd.DataFrame(columns=columns)
    human_pairs = people.groupby("pair_key")["score_a"].mean()
    human_ratings = fit_ratings(people, n_boot=0)
    rows = []
    for judge, own in outcomes[outcomes["judge"] != human].groupby("judge", sort=True):
        judged = own.groupby("pair_key")["score_a"].mean()
        both = pd.concat([human_pairs.rename("h"), judged.rename("j")], axis=1, join="inner")
        agree = (_winner_class(both["h"]) == _winner_class(both["j"])).mean() * 100 if len(both) else np.nan
        ratings = fit_ratings(own, n_boot=0)
        merged = human_ratings.merge(ratings, on="model", suffixes=("_h", "_j"))
        rows.append(
            {
                "judge": judge,
                "n_pairs": len(both),
                "agree_pct": float(agree),
                "spearman": spearman(merged["rating_h"], merged["rating_j"]),
                "n_models": len(merged),
            }
        )
    return pd.DataFrame(rows, columns=columns)


# --- per-turn trends -------------------------------------------------------------------------


def _per_response(frame: pd.DataFrame) -> pd.DataFrame:
    """model_name, prompt_index, overall: one row per response when the frame has judgements."""
    data = frame
    if "judgement_failed" in data.columns:
        data = data[~data["judgement_failed"].astype(bool)]
    data = data[data["overall"].notna()]
    if "response_id" in data.columns:
        data = data.groupby("response_id", sort=False).agg(
            model_name=("model_name", "first"),
            prompt_index=("prompt_index", "first"),
            overall=("overall", "mean"),
        )
    return data[["model_name", "prompt_index", "overall"]].reset_index(drop=True)


def turn_means(frame: pd.DataFrame) -> pd.DataFrame:
    """Long frame: model_name, turn (1-based), mean overall, n responses scored."""
    per = _per_response(frame)
    if per.empty:
        return pd.DataFrame(columns=["model_name", "turn", "mean", "n"])
    per = per.assign(turn=pd.to_numeric(per["prompt_index"]).astype(int) + 1)
    out = per.groupby(["model_name", "turn"], sort=True)["overall"].agg(mean="mean", n="count")
    return out.reset_index()


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.ptp(x) == 0:
        return float("nan")
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


def turn_trend(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model: the mean score of each turn (a sparkline) and the least-squares slope per turn.

    Input: a results.responses_frame (failed judgements left out, a response's
    judgements averaged first) or any frame with model_name, prompt_index,
    overall. The slope is fitted over responses, not over turn means, so a turn
    with more responses weighs more. Columns: model_name, turns, scores (list of
    turn means, turn 1 first; NaN for a turn without scores), first, last,
    change (last − first), slope, n.
    """
    columns = ["model_name", "turns", "scores", "first", "last", "change", "slope", "n"]
    per = _per_response(frame)
    if per.empty:
        return pd.DataFrame(columns=columns)
    per = per.assign(turn=pd.to_numeric(per["prompt_index"]).astype(int) + 1)
    # Turns come from the whole frame: a turn whose judgements all failed shows as a gap.
    max_turn = int(pd.to_numeric(frame["prompt_index"]).max()) + 1
    rows = []
    for model, group in per.groupby("model_name", sort=True):
        means = group.groupby("turn")["overall"].mean()
        scores = [float(means.get(t, np.nan)) for t in range(1, max_turn + 1)]
        seen = means.sort_index()
        rows.append(
            {
                "model_name": model,
                "turns": len(seen),
                "scores": scores,
                "first": float(seen.iloc[0]),
                "last": float(seen.iloc[-1]),
                "change": float(seen.iloc[-1] - seen.iloc[0]),
                "slope": _slope(group["turn"].to_numpy(dtype=float), group["overall"].to_numpy(dtype=float)),
                "n": len(group),
            }
        )
    return pd.DataFrame(rows, columns=columns)
