"""What the Results page shows about scores: leaderboard, pairwise ratings, turn trends, compare, judge choice.

Every function takes frames that storybench_core.results / pairwise / ratings
already computed and shapes them for display (labels, CI text, the columns a
table shows), so the page only places them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from .. import catalog, charts, pairwise, ratings, results
from ..config import ModelSpec, RunConfig
from ..store.base import Store
from .results import ResponseFilters

ALL_JUDGES = "(all judges)"

# Leaderboard columns besides the per-criterion ones, in display order, with their labels.
LEADERBOARD_LABELS = {
    "rank": "#",
    "model": "model",
    "overall": "overall",
    "ci": "95% CI",
    "n_responses": "responses",
    "n_failed_judgements": "failed judgements",
    "words": "words",
    "distinct_2": "distinct-2",
    "distinct_3": "distinct-3",
    "repeated_4gram_rate": "repeated 4-grams",
    "stock_phrase_count": "stock phrases",
    "tokens_per_s": "tokens/s",
}
TEXT_METRICS = ("distinct_2", "distinct_3", "repeated_4gram_rate", "stock_phrase_count")


def is_nan(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def format_ci(mean: Any, low: Any, high: Any, digits: int = 2) -> str:
    """'3.43 [3.10–3.71]'; '–' without a mean, the mean alone without an interval."""
    if is_nan(mean):
        return "–"
    if is_nan(low) or is_nan(high):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}–{high:.{digits}f}]"


def criterion_labels(criteria: Sequence[str]) -> dict[str, str]:
    """Criterion id → its rubric name (or the id in words for a criterion the rubric no longer has)."""
    names = {c.id: c.name for c in catalog.load_rubric().criteria}
    return {c: names.get(c, c.replace("_", " ")) for c in criteria}


# --- the scored frame ------------------------------------------------------------------------


def filter_scores(df: pd.DataFrame, filters: ResponseFilters) -> pd.DataFrame:
    """The rows of a results.responses_frame that match the page's filters (prompts are 1-based there)."""
    mask = pd.Series(True, index=df.index)
    for column, wanted in (
        ("model_name", filters.models),
        ("sequence", filters.sequences),
        ("run", filters.runs),
    ):
        if wanted:
            mask &= df[column].astype(object).isin(list(wanted))
    if filters.prompts:
        mask &= (df["prompt_index"] + 1).isin(list(filters.prompts)).fillna(False).astype(bool)
    return df[mask]


def judges_of(df: pd.DataFrame) -> list[str]:
    """Judges with at least one judgement (valid or failed) in the frame."""
    return sorted(str(j) for j in df["judge_model"].dropna().unique())


def has_judgements(df: pd.DataFrame) -> bool:
    return bool(df["judge_model"].notna().any())


def for_judge(df: pd.DataFrame, judge: str | None) -> pd.DataFrame:
    """Only one judge's rows (None: every judge's)."""
    return df if judge is None else df[df["judge_model"] == judge]


def score_scale() -> tuple[int, int]:
    """The rubric's score range (the sparkline axis)."""
    rubric = catalog.load_rubric()
    return rubric.scale_min, rubric.scale_max


def judge_filter(choice: str | None) -> str | None:
    """The judge argument for results.leaderboard & co.: None averages all judges."""
    return None if choice in (None, "", ALL_JUDGES) else choice


# --- leaderboard -----------------------------------------------------------------------------


def text_summary(metrics: pd.DataFrame, response_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """Per-model means of results.text_metrics_frame rows, optionally only for some responses."""
    if response_ids is not None:
        wanted = set(response_ids)  # a set: Series.isin of 100k strings is much slower
        metrics = metrics[[rid in wanted for rid in metrics["response_id"]]]
    cols = ["words", *TEXT_METRICS]
    if metrics.empty:
        return pd.DataFrame(columns=["model_name", *cols])
    return metrics.groupby("model_name", sort=True, observed=True)[cols].mean().reset_index()


def leaderboard_table(board: pd.DataFrame, text: pd.DataFrame | None = None) -> pd.DataFrame:
    """results.leaderboard with the CI as text and the text-quality metrics beside the scores.

    Columns: rank, model, overall, ci, n_responses, n_failed_judgements, one
    score_<criterion> per criterion, words, distinct_2, distinct_3,
    repeated_4gram_rate, stock_phrase_count, tokens_per_s.
    """
    criteria = [c for c in board.columns if c.startswith(results.SCORE_PREFIX)]
    if board.empty:
        return pd.DataFrame(columns=[*list(LEADERBOARD_LABELS)[:6], *criteria])
    out = pd.DataFrame(
        {
            "rank": board["rank"].astype(int),
            "model": board["model_name"].astype(str),
            "overall": board["overall"].astype(float).round(2),
            "ci": [
                format_ci(m, lo, hi)
                for m, lo, hi in zip(board["overall"], board["ci_low"], board["ci_high"], strict=True)
            ],
            "n_responses": board["n_responses"].astype(int),
            "n_failed_judgements": board.get("n_failed_judgements", pd.Series(0, index=board.index)).astype(
                int
            ),
        }
    )
    for col in criteria:
        out[col] = board[col].astype(float).round(2)
    out["words"] = board["mean_words"].astype(float).round(0)
    if text is not None and not text.empty:
        metrics = text.set_index(text["model_name"].astype(str))
        for col in TEXT_METRICS:
            out[col] = (
                out["model"].map(metrics[col]).astype(float).round(3 if col != "stock_phrase_count" else 2)
            )
    out["tokens_per_s"] = board["mean_tokens_per_s"].astype(float).round(1)
    return out.reset_index(drop=True)


def leaderboard_labels(table: pd.DataFrame) -> dict[str, str]:
    """Column → header for the leaderboard table (criteria by their rubric names)."""
    criteria = [
        c.removeprefix(results.SCORE_PREFIX) for c in table.columns if c.startswith(results.SCORE_PREFIX)
    ]
    names = criterion_labels(criteria)
    return {
        c: LEADERBOARD_LABELS.get(c, names.get(c.removeprefix(results.SCORE_PREFIX), c))
        for c in table.columns
    }


def text_sample_caption(sample: results.TextSample) -> str:
    """'' when every response was read; else how many the text metrics stand on."""
    if sample.complete:
        return ""
    return (
        f"Text metrics (distinct-n, repeated 4-grams, stock phrases) over {sample.n_sampled:,} of "
        f"{sample.n_total:,} responses: per model, whole runs from run 1 up to about "
        f"{results.TEXT_SAMPLE_PER_MODEL} responses."
    )


# Headers of the smaller score tables (judge agreement, attempt spread, rank and human agreement, position bias).
TABLE_LABELS = {
    "model_name": "model",
    "judge_model": "judge",
    "judge_a": "judge A",
    "judge_b": "judge B",
    "n_models": "models",
    "spearman_model_means": "Spearman ρ of model means",
    "n_responses": "responses",
    "mean_diff": "mean diff (A − B)",
    "mean_abs_diff": "mean |diff|",
    "max_abs_diff": "max |diff|",
    "mean_std_overall": "mean std (overall)",
    "max_std_overall": "max std (overall)",
    "mean_std_criterion": "mean std (criteria)",
    "pairwise_rating": "pairwise rating",
    "pairwise_rank": "pairwise rank",
    "rubric_overall": "rubric overall",
    "rubric_rank": "rubric rank",
    "n_pairs": "pairs decided by both",
    "agree_pct": "same winner (%)",
    "spearman": "Spearman ρ of ratings",
    "first_wins": "first shown wins",
    "second_wins": "second shown wins",
    "first_win_rate": "first-shown win rate",
    "pairs_both_orders": "pairs in both orders",
    "consistent_rate": "same verdict in both orders",
}


def table_labels(frame: pd.DataFrame) -> dict[str, str]:
    """Column → header for one of the smaller score tables (unknown columns keep their name)."""
    return {c: TABLE_LABELS.get(c, c) for c in frame.columns}


def rounded(frame: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Floats rounded for display."""
    return frame.round(digits)


# --- score charts: aggregates only ------------------------------------------------------------

SCORE_CHARTS = (
    "criterion_heatmap",
    "criterion_radar",
    "sequence_bars",
    "length_scatter",
    "score_distribution",
)


def score_box_figure(df: pd.DataFrame, judge: str | None = None) -> go.Figure:
    """Per-response overall scores per model as boxes drawn from their quartiles (results.box_stats)."""
    title = "Score distribution per model"
    stats = results.box_stats(results.score_distribution(df, judge), "overall", ["model_name"])
    if stats.empty:
        return charts.score_distribution(pd.DataFrame(columns=["model_name", "overall"]))
    fig = go.Figure()
    for row in stats.to_dict("records"):
        fig.add_trace(
            go.Box(
                name=str(row["model_name"]),
                q1=[row["q1"]],
                median=[row["median"]],
                q3=[row["q3"]],
                lowerfence=[row["lowerfence"]],
                upperfence=[row["upperfence"]],
                mean=[row["mean"]],
                hovertemplate=f"n={row['n']}<extra>{row['model_name']}</extra>",
            )
        )
    fig.update_layout(title=title, yaxis_title="overall score", showlegend=False)
    return fig


def length_score_figure(df: pd.DataFrame, judge: str | None = None, bins: int = 12) -> go.Figure:
    """Mean overall score against mean length per length bin, one line per model (results.binned_means)."""
    title = "Score vs response length"
    binned = results.binned_means(results.length_vs_score(df, judge), "words", "overall", "model_name", bins)
    if binned.empty:
        return charts.length_scatter(pd.DataFrame(columns=["model_name", "words", "overall"]))
    fig = go.Figure()
    for model, part in binned.groupby("model_name", sort=True, observed=True):
        fig.add_trace(
            go.Scatter(
                x=part["x"].round(1).to_list(),
                y=part["y"].round(3).to_list(),
                customdata=part["n"].to_list(),
                mode="lines+markers",
                name=str(model),
                hovertemplate="%{x:.0f} words → %{y:.2f} (n=%{customdata})<extra>" + str(model) + "</extra>",
            )
        )
    fig.update_layout(
        title=title, xaxis_title="words (mean of the length bin)", yaxis_title="mean overall score"
    )
    return fig


def score_figures(df: pd.DataFrame, judge: str | None = None) -> dict[str, go.Figure]:
    """The Charts tab's score figures (SCORE_CHARTS order), each from a per-model aggregate."""
    matrix = results.criterion_matrix(df, judge)
    return {
        "criterion_heatmap": charts.criterion_heatmap(matrix),
        "criterion_radar": charts.criterion_radar(matrix),
        "sequence_bars": charts.sequence_bars(results.per_sequence(df, judge)),
        "length_scatter": length_score_figure(df, judge),
        "score_distribution": score_box_figure(df, judge),
    }


# --- turn trends -----------------------------------------------------------------------------


def trend_table(trend: pd.DataFrame) -> pd.DataFrame:
    """ratings.turn_trend for a sparkline column: scores as plain lists (gaps as None), numbers rounded."""
    columns = ["model", "scores", "first", "last", "change", "slope", "n"]
    if trend.empty:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(
        {
            "model": trend["model_name"].astype(str),
            "scores": [[None if is_nan(v) else round(float(v), 3) for v in s] for s in trend["scores"]],
            "first": trend["first"].astype(float).round(2),
            "last": trend["last"].astype(float).round(2),
            "change": trend["change"].astype(float).round(2),
            "slope": trend["slope"].astype(float).round(3),
            "n": trend["n"].astype(int),
        }
    )[columns]


def has_several_turns(df: pd.DataFrame) -> bool:
    return bool(df["prompt_index"].dropna().nunique() > 1)


# --- pairwise ratings ------------------------------------------------------------------------


def ratings_table(frame: pd.DataFrame) -> pd.DataFrame:
    """ratings.fit_ratings for display: rating with its CI as text, comparisons, win rate."""
    columns = ["rank", "model", "rating", "ci", "comparisons", "win_rate"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(
        {
            "rank": frame["rank"].astype(int),
            "model": frame["model"].astype(str),
            "rating": frame["rating"].astype(float).round(0),
            "ci": [
                format_ci(m, lo, hi, digits=0)
                for m, lo, hi in zip(frame["rating"], frame["ci_low"], frame["ci_high"], strict=True)
            ],
            "comparisons": frame["comparisons"].astype(int),
            "win_rate": frame["win_rate"].astype(float).round(3),
        }
    )[columns]


@dataclass(frozen=True)
class RatingSection:
    """One ratings table: a judge's, the humans', or every judge pooled."""

    title: str
    table: pd.DataFrame


def rating_sections(report: pairwise.PairwiseReport) -> list[RatingSection]:
    """Judges first (alphabetically), then the human votes, then the pool when several judges rated."""
    judges = sorted(j for j in report.ratings if j != pairwise.HUMAN)
    sections = [RatingSection(f"Judge {j}", ratings_table(report.ratings[j])) for j in judges]
    if pairwise.HUMAN in report.ratings:
        sections.append(RatingSection("Team votes (human)", ratings_table(report.ratings[pairwise.HUMAN])))
    if len(judges) > 1 and not report.pooled.empty:
        sections.append(RatingSection("All judges pooled", ratings_table(report.pooled)))
    return sections


def agreement_reference(report: pairwise.PairwiseReport) -> pd.DataFrame:
    """The pairwise ratings to hold against the rubric: the judges pooled, else the humans'."""
    if not report.pooled.empty:
        return report.pooled
    return report.ratings.get(pairwise.HUMAN, pd.DataFrame(columns=ratings.RATING_COLUMNS))


def rank_agreement_text(agreement: ratings.RankAgreement) -> str:
    """The Spearman ρ as a short value ('0.80', or '–' when undefined)."""
    return "–" if is_nan(agreement.spearman) else f"{agreement.spearman:.2f}"


def position_bias_figure(bias: pd.DataFrame) -> go.Figure:
    """Per judge: how often the text shown first wins (0.5 = no position bias), with order consistency."""
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=bias["judge"].astype(str),
            y=bias["first_win_rate"],
            name="first shown wins",
            customdata=bias[["first_wins", "second_wins", "ties", "consistent_rate"]].to_numpy(),
            hovertemplate=(
                "%{x}: first wins %{y:.0%}<br>%{customdata[0]} first / %{customdata[1]} second / "
                "%{customdata[2]} ties<br>same verdict in both orders: %{customdata[3]:.0%}<extra></extra>"
            ),
        )
    )
    fig.add_hline(y=0.5, line_dash="dash", annotation_text="no bias", annotation_position="top left")
    fig.update_layout(
        title="Position bias: share of decided verdicts won by the text shown first",
        yaxis={"range": [0, 1], "tickformat": ".0%", "title": "first shown wins"},
        xaxis_title="judge",
        showlegend=False,
    )
    return fig


# --- judge now -------------------------------------------------------------------------------


def judge_options(config: RunConfig) -> dict[str, ModelSpec | None]:
    """Choices for 'Judge now': the configured judge(s) (None), each built-in model, each candidate model."""
    from ..bundled import BUILTIN_MODELS

    options: dict[str, ModelSpec | None] = {}
    configured = config.judge.judges()
    if configured:
        names = ", ".join(s.display_name for s in configured)
        options[f"Configured judge{'s' if len(configured) > 1 else ''}: {names}"] = None
    for builtin in BUILTIN_MODELS:
        bundled = ModelSpec(kind="bundled", builtin=builtin)
        if not any(s == bundled for s in configured):
            options[f"Bundled model: {bundled.display_name}"] = bundled
    for spec in config.models:
        if not any(s == spec for s in configured):
            options[f"Same as candidate: {spec.display_name}"] = spec
    return options


def judge_warnings(spec: ModelSpec | None, config: RunConfig) -> list[str]:
    """Self-preference warnings for the chosen judge(s) (same model or family as a judged model)."""
    specs = config.judge.judges() if spec is None else [spec]
    return [w for s in specs for w in pairwise.same_family_warnings(s, config.models)]


# --- exports ---------------------------------------------------------------------------------


def export_stem(evaluation: Mapping[str, Any]) -> str:
    """A file name stem from the evaluation's name and id: 'storybench-night-run-ab12cd'."""
    name = re.sub(r"[^a-z0-9]+", "-", str(evaluation.get("name") or "").lower()).strip("-")[:40]
    return "-".join(p for p in ("storybench", name, str(evaluation.get("id") or "")[:8]) if p)


def scores_csv(store: Store, evaluation_id: str) -> bytes:
    """Every response (failed ones too) joined with its judgements and their justifications, as CSV."""
    frame = results.responses_frame(
        store, evaluation_id, include_text=True, justifications=True, include_failed_responses=True
    )
    return results.csv_bytes(frame)


def evaluation_json_bytes(store: Store, evaluation_id: str) -> bytes:
    """results.evaluation_json as pretty-printed UTF-8."""
    data = results.evaluation_json(store, evaluation_id)
    return (json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def markdown_report_bytes(store: Store, evaluation_id: str) -> bytes:
    return results.markdown_report(store, evaluation_id).encode("utf-8")
