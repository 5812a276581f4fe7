"""Results as pandas frames: leaderboard, per-criterion, per-sequence, agreement, compare, exports.

Everything starts from `responses_frame`: one row per response × judge ×
attempt (a response nobody judged yet keeps one row with empty judge
columns). Failed judgements stay in the frame with NaN scores: aggregates
leave them out and count them. Aggregates first average a response's valid
judgements (over attempts, and over judges unless one judge is chosen), so
every response weighs the same; the leaderboard's 95% confidence interval is
a bootstrap over those per-response scores.

Reads go through one projection query per collection and the rest is
vectorised pandas. A store may offer two flat projections that skip document
decoding (see `_load_flat`); without them the frame is built from
`list_responses(include_messages=False)` and `list_judgements`, which is
correct but about five times slower at 100k responses.

Modules: frames (loading, per-response scores), stats (bootstrap, Spearman),
tables (leaderboard and the other aggregates), text (text metrics), compare
(side by side), export (CSV, JSON, Markdown).
"""

from __future__ import annotations

from .compare import compare_frame
from .export import csv_bytes, evaluation_json, export_csv, export_json, markdown_report, markdown_table
from .frames import (
    JUDGEMENT_SCORE_FIELDS,
    RESPONSE_STAT_FIELDS,
    SCORE_PREFIX,
    WHY_PREFIX,
    criteria_of,
    judgements_frame,
    per_response,
    responses_frame,
    word_count,
)
from .stats import bootstrap_ci, spearman
from .tables import (
    attempt_spread,
    criterion_matrix,
    judge_agreement,
    leaderboard,
    length_bias,
    length_vs_score,
    per_criterion,
    per_sequence,
    score_distribution,
)
from .text import text_metrics, text_metrics_frame, text_metrics_summary

__all__ = [
    "JUDGEMENT_SCORE_FIELDS",
    "RESPONSE_STAT_FIELDS",
    "SCORE_PREFIX",
    "WHY_PREFIX",
    "attempt_spread",
    "bootstrap_ci",
    "compare_frame",
    "criteria_of",
    "criterion_matrix",
    "csv_bytes",
    "evaluation_json",
    "export_csv",
    "export_json",
    "judge_agreement",
    "judgements_frame",
    "leaderboard",
    "length_bias",
    "length_vs_score",
    "markdown_report",
    "markdown_table",
    "per_criterion",
    "per_response",
    "per_sequence",
    "responses_frame",
    "score_distribution",
    "spearman",
    "text_metrics",
    "text_metrics_frame",
    "text_metrics_summary",
    "word_count",
]
