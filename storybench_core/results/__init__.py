"""Results as pandas frames: leaderboard, per-criterion, per-sequence, agreement, compare, exports.

Everything starts from `responses_frame`: one row per response × judge ×
attempt (a response nobody judged yet keeps one row with empty judge
columns). Failed judgements stay in the frame with NaN scores: aggregates
leave them out and count them. Aggregates first average a response's valid
judgements (over attempts, and over judges unless one judge is chosen), so
every response weighs the same; the leaderboard's 95% confidence interval is
a bootstrap over those per-response scores.

Reads go through one projection query per collection and the rest is
vectorised pandas: the store's two flat projections (`list_response_stats`,
`list_judgement_scores`) skip document decoding; without them (a store that
lacks them, texts asked for) the frame is built from
`list_responses(include_messages=False)` and `list_judgements`. Texts are
read only where they are shown or measured: text metrics over a bounded
sample of conversations (`text_sample`), exports when asked for.

Modules: frames (loading, per-response scores), stats (bootstrap, Spearman),
tables (leaderboard and the other aggregates), distribution (box statistics
and binned means for charts), text (text metrics), compare (side by side),
export (CSV, JSON, Markdown).
"""

from __future__ import annotations

from .compare import compare_frame
from .distribution import binned_means, box_stats
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
from .text import (
    TEXT_SAMPLE_PER_MODEL,
    TextSample,
    sample_text_metrics,
    text_metrics,
    text_metrics_frame,
    text_metrics_summary,
    text_sample,
)

__all__ = [
    "JUDGEMENT_SCORE_FIELDS",
    "RESPONSE_STAT_FIELDS",
    "SCORE_PREFIX",
    "TEXT_SAMPLE_PER_MODEL",
    "WHY_PREFIX",
    "TextSample",
    "attempt_spread",
    "binned_means",
    "bootstrap_ci",
    "box_stats",
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
    "sample_text_metrics",
    "score_distribution",
    "spearman",
    "text_metrics",
    "text_metrics_frame",
    "text_metrics_summary",
    "text_sample",
    "word_count",
]
