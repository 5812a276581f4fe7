"""Plotly figures for the Results page, built from the results package's frames (plotly only, no streamlit).

Each builder takes a frame that the results package already computed and returns a
`plotly.graph_objects.Figure`; the page only places it (`st.plotly_chart`).
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import results


def _empty(title: str, note: str = "No scores yet: judge the evaluation first.") -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False)
    fig.add_annotation(text=note, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return fig


def criterion_heatmap(matrix: pd.DataFrame, scale: tuple[int, int] = (1, 5)) -> go.Figure:
    """Model × criterion mean scores (results.criterion_matrix) as an annotated heatmap."""
    title = "Mean score per criterion"
    if matrix.empty:
        return _empty(title)
    fig = go.Figure(
        go.Heatmap(
            z=matrix.to_numpy(),
            x=list(matrix.columns),
            y=list(matrix.index),
            zmin=scale[0],
            zmax=scale[1],
            colorscale="RdYlGn",
            text=matrix.round(2).astype(str).to_numpy(),
            texttemplate="%{text}",
            hovertemplate="%{y}<br>%{x}: %{z:.2f}<extra></extra>",
            colorbar={"title": "score"},
        )
    )
    fig.update_layout(title=title, yaxis={"autorange": "reversed"}, height=max(260, 60 + 40 * len(matrix)))
    return fig


def criterion_radar(matrix: pd.DataFrame, scale: tuple[int, int] = (1, 5)) -> go.Figure:
    """One closed polygon per model over the criteria (results.criterion_matrix)."""
    title = "Criterion profile per model"
    if matrix.empty:
        return _empty(title)
    fig = go.Figure()
    theta = [*matrix.columns, matrix.columns[0]]
    for model, row in matrix.iterrows():
        values = [*row.to_list(), row.iloc[0]]
        fig.add_trace(go.Scatterpolar(r=values, theta=theta, name=str(model), fill="toself", opacity=0.55))
    fig.update_layout(title=title, polar={"radialaxis": {"range": list(scale)}})
    return fig


def sequence_bars(per_sequence: pd.DataFrame) -> go.Figure:
    """Grouped bars: mean overall score per sequence, one colour per model (results.per_sequence)."""
    title = "Mean overall score per sequence"
    if per_sequence.empty or per_sequence["mean"].isna().all():
        return _empty(title)
    fig = go.Figure()
    for model, part in per_sequence.groupby("model_name", sort=True):
        fig.add_trace(
            go.Bar(
                x=part["sequence"],
                y=part["mean"],
                name=str(model),
                error_y={"type": "data", "array": part["std"].fillna(0).to_list(), "visible": True},
                customdata=part["n"],
                hovertemplate="%{x}: %{y:.2f} (n=%{customdata})<extra>" + str(model) + "</extra>",
            )
        )
    fig.update_layout(title=title, barmode="group", yaxis_title="overall score", xaxis_title="sequence")
    return fig


def length_scatter(length_vs_score: pd.DataFrame) -> go.Figure:
    """Overall score against response length in words, one colour per model (length bias)."""
    title = "Score vs response length"
    if length_vs_score.empty:
        return _empty(title)
    fig = go.Figure()
    for model, part in length_vs_score.groupby("model_name", sort=True):
        fig.add_trace(
            go.Scattergl(
                x=part["words"],
                y=part["overall"],
                mode="markers",
                name=str(model),
                marker={"size": 6, "opacity": 0.6},
                hovertemplate="%{x} words → %{y:.2f}<extra>" + str(model) + "</extra>",
            )
        )
    fig.update_layout(title=title, xaxis_title="words", yaxis_title="overall score")
    return fig


def score_distribution(distribution: pd.DataFrame, kind: str = "box") -> go.Figure:
    """Per-response overall scores per model as box (default) or violin plots."""
    title = "Score distribution per model"
    if distribution.empty:
        return _empty(title)
    fig = go.Figure()
    for model, part in distribution.groupby("model_name", sort=True):
        if kind == "violin":
            fig.add_trace(
                go.Violin(y=part["overall"], name=str(model), box_visible=True, meanline_visible=True)
            )
        else:
            fig.add_trace(go.Box(y=part["overall"], name=str(model), boxmean=True))
    fig.update_layout(title=title, yaxis_title="overall score", showlegend=False)
    return fig


def speed_bars(leaderboard: pd.DataFrame) -> go.Figure:
    """Mean words, generation time and tokens/s per model, side by side (results.leaderboard)."""
    title = "Length and speed per model"
    if leaderboard.empty:
        return _empty(title, "No responses yet.")
    panels = [
        ("mean_words", "words"),
        ("mean_generation_time_s", "generation time (s)"),
        ("mean_tokens_per_s", "tokens/s"),
    ]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[label for _, label in panels])
    for i, (col, label) in enumerate(panels, start=1):
        fig.add_trace(
            go.Bar(x=leaderboard["model_name"], y=leaderboard[col], name=label, showlegend=False),
            row=1,
            col=i,
        )
    fig.update_layout(title=title)
    return fig


def all_figures(df: pd.DataFrame, judge: str | None = None) -> dict[str, go.Figure]:
    """Every Results chart for one results frame, keyed by a short name."""
    matrix = results.criterion_matrix(df, judge)
    return {
        "criterion_heatmap": criterion_heatmap(matrix),
        "criterion_radar": criterion_radar(matrix),
        "sequence_bars": sequence_bars(results.per_sequence(df, judge)),
        "length_scatter": length_scatter(results.length_vs_score(df, judge)),
        "score_distribution": score_distribution(results.score_distribution(df, judge)),
        "speed_bars": speed_bars(results.leaderboard(df, judge=judge)),
    }
