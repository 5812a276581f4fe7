"""Aggregates the Results page shows: leaderboard, per criterion, per sequence, agreement."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .frames import SCORE_PREFIX, criteria_of, per_response, score_columns
from .stats import model_seed, nested_bootstrap_ci, spearman

# --- views -----------------------------------------------------------------------------------


def leaderboard(
    df: pd.DataFrame, n_boot: int = 1000, seed: int = 0, judge: str | None = None
) -> pd.DataFrame:
    """Models ranked by mean overall score with a 95% bootstrap CI over responses.

    Columns: rank, model_name, overall, ci_low, ci_high, n_responses, n_scored,
    n_judgements, n_failed_judgements, score_<criterion>…, mean_words,
    mean_completion_tokens, mean_generation_time_s, mean_tokens_per_s.
    """
    per = per_response(df, judge)
    if per.empty:
        return pd.DataFrame(columns=["rank", "model_name", "overall", "ci_low", "ci_high", "n_responses"])
    grouped = per.groupby("model_name", sort=True)
    board = grouped.agg(
        overall=("overall", "mean"),
        n_responses=("overall", "size"),
        n_scored=("overall", "count"),
        n_judgements=("n_judgements", "sum"),
        n_failed_judgements=("n_failed_judgements", "sum"),
    )
    # Intervals resample responses and, within each, its judgements (attempts, judges): a judge's
    # disagreement with itself widens them. Where no response has two judgements that differ, the
    # judge's noise was not measured (one attempt, or repeats that cannot differ), and says so.
    rows = df if judge is None else df[df["judge_model"] == judge]
    valid = rows[rows["judge_model"].notna() & ~rows["judgement_failed"]]
    cis, noise = {}, {}
    for model in board.index:
        mine = valid[valid["model_name"] == model]
        codes = pd.factorize(mine["response_id"])[0]
        cis[model] = nested_bootstrap_ci(
            mine["overall"].to_numpy(dtype=float), codes, n_boot, model_seed(seed, model)
        )
        spread = mine.groupby("response_id", sort=False, observed=True)["overall"].nunique()
        noise[model] = "measured" if bool((spread > 1).any()) else "not measured"
    board["ci_low"] = [cis[m][0] for m in board.index]
    board["ci_high"] = [cis[m][1] for m in board.index]
    board["judge_noise"] = [noise[m] for m in board.index]
    board = board.join(grouped[score_columns(per)].mean())
    board["mean_words"] = grouped["words"].mean()
    board["mean_completion_tokens"] = grouped["completion_tokens"].mean()
    board["mean_generation_time_s"] = grouped["generation_time_s"].mean()
    board["mean_tokens_per_s"] = grouped["tokens_per_s"].mean()
    board = board.sort_values(["overall", "n_scored"], ascending=[False, False], na_position="last")
    board.insert(0, "rank", np.arange(1, len(board) + 1))
    board = board.reset_index()
    front = ["rank", "model_name", "overall", "ci_low", "ci_high"]
    return board[front + [c for c in board.columns if c not in front]]


def per_criterion(df: pd.DataFrame, judge: str | None = None) -> pd.DataFrame:
    """Long frame model_name × criterion → mean, std, n (over per-response scores)."""
    per = per_response(df, judge)
    cols = score_columns(per)
    if per.empty or not cols:
        return pd.DataFrame(columns=["model_name", "criterion", "mean", "std", "n"])
    grouped = per.groupby("model_name", sort=True, observed=True)[cols]
    parts = {"mean": grouped.mean(), "std": grouped.std(), "n": grouped.count()}
    out = pd.concat({k: v.stack() for k, v in parts.items()}, axis=1)
    out.index = out.index.set_names(["model_name", "criterion"])
    out = out.reset_index()
    out["criterion"] = out["criterion"].str.removeprefix(SCORE_PREFIX)
    out["n"] = out["n"].astype(int)
    return out


def criterion_matrix(df: pd.DataFrame, judge: str | None = None) -> pd.DataFrame:
    """Wide model × criterion table of mean scores (the heatmap's data)."""
    long = per_criterion(df, judge)
    if long.empty:
        return pd.DataFrame()
    wide = long.pivot(index="model_name", columns="criterion", values="mean")
    return wide[[c for c in criteria_of(df) if c in wide.columns]]


def per_sequence(df: pd.DataFrame, judge: str | None = None) -> pd.DataFrame:
    """Model × sequence → mean overall, std, n responses scored, mean words."""
    per = per_response(df, judge)
    if per.empty:
        return pd.DataFrame(columns=["model_name", "sequence", "mean", "std", "n", "mean_words"])
    out = per.groupby(["model_name", "sequence"], sort=True).agg(
        mean=("overall", "mean"), std=("overall", "std"), n=("overall", "count"), mean_words=("words", "mean")
    )
    return out.reset_index()


def score_distribution(df: pd.DataFrame, judge: str | None = None) -> pd.DataFrame:
    """Per-response overall scores with model and sequence (for box / violin plots)."""
    per = per_response(df, judge)
    out = per.loc[per["overall"].notna(), ["model_name", "sequence", "overall"]]
    return out.reset_index()


def length_vs_score(df: pd.DataFrame, judge: str | None = None) -> pd.DataFrame:
    """Per-response length (words, tokens) against overall score, for the length-bias scatter."""
    per = per_response(df, judge)
    cols = ["model_name", "sequence", "words", "completion_tokens", "overall"]
    return per.loc[per["overall"].notna(), cols].reset_index()


def length_bias(df: pd.DataFrame, judge: str | None = None) -> pd.DataFrame:
    """Spearman correlation of words with overall score, per model and for all models pooled."""
    data = length_vs_score(df, judge)
    rows = [
        {"model_name": m, "spearman_words_score": spearman(g["words"], g["overall"]), "n": len(g)}
        for m, g in data.groupby("model_name", sort=True)
    ]
    rows.append(
        {
            "model_name": "(all)",
            "spearman_words_score": spearman(data["words"], data["overall"]),
            "n": len(data),
        }
    )
    return pd.DataFrame(rows)


def judge_agreement(df: pd.DataFrame) -> pd.DataFrame:
    """For each pair of judges: Spearman ρ of model means, and per-response score differences (a − b)."""
    judged = df[df["judge_model"].notna() & ~df["judgement_failed"]]
    judges = sorted(judged["judge_model"].unique())
    columns = [
        "judge_a", "judge_b", "n_models", "spearman_model_means",
        "n_responses", "mean_diff", "mean_abs_diff", "max_abs_diff",
    ]  # fmt: skip
    if len(judges) < 2:
        return pd.DataFrame(columns=columns)
    by_response = judged.groupby(["response_id", "judge_model"])["overall"].mean().unstack("judge_model")
    model_of = judged.drop_duplicates("response_id").set_index("response_id")["model_name"]
    model_means = by_response.groupby(model_of.reindex(by_response.index)).mean()
    rows = []
    for i, a in enumerate(judges):
        for b in judges[i + 1 :]:
            both = model_means[[a, b]].dropna()
            diff = (by_response[a] - by_response[b]).dropna()
            rows.append(
                {
                    "judge_a": a,
                    "judge_b": b,
                    "n_models": len(both),
                    "spearman_model_means": spearman(both[a], both[b]),
                    "n_responses": len(diff),
                    "mean_diff": float(diff.mean()) if len(diff) else np.nan,
                    "mean_abs_diff": float(diff.abs().mean()) if len(diff) else np.nan,
                    "max_abs_diff": float(diff.abs().max()) if len(diff) else np.nan,
                }
            )
    return pd.DataFrame(rows, columns=columns)


def attempt_spread(df: pd.DataFrame) -> pd.DataFrame:
    """How much repeated judgements of one response disagree: std across attempts (ddof=1).

    Per model × judge, over responses with at least two valid attempts: the mean
    and max std of the overall score, and the mean std of a single criterion.
    """
    valid = df[df["judge_model"].notna() & ~df["judgement_failed"]]
    cols = ["overall", *score_columns(df)]
    columns = [
        "model_name",
        "judge_model",
        "n_responses",
        "mean_std_overall",
        "max_std_overall",
        "mean_std_criterion",
    ]
    if valid.empty:
        return pd.DataFrame(columns=columns)
    g = valid.groupby(["model_name", "judge_model", "response_id"], sort=True)
    std = g[cols].std(ddof=1)
    std = std[g.size() >= 2]
    if std.empty:
        return pd.DataFrame(columns=columns)
    crit = std[cols[1:]].mean(axis=1) if len(cols) > 1 else pd.Series(np.nan, index=std.index)
    std = std.assign(_crit=crit)
    out = std.groupby(level=["model_name", "judge_model"]).agg(
        n_responses=("overall", "size"),
        mean_std_overall=("overall", "mean"),
        max_std_overall=("overall", "max"),
        mean_std_criterion=("_crit", "mean"),
    )
    return out.reset_index()[columns]
