"""Blind pairwise judging: two models' answers to the same brief, shown as A and B, in both orders.

A *pair* is two models' responses to the same (sequence, run, prompt index),
within one evaluation or across several (then keyed by sequence, run, prompt
index and prompt text). The judge sees the brief, the earlier briefs, and the
two texts clipped to one shared character budget (recorded), and answers per
criterion group with a 7-point label, A+++ … A+, tie, B+ … B+++, constrained
by a JSON schema where the backend supports it and validated either way. An
invalid answer is retried with the reason fed back, then stored as a failed
verdict: no label is ever invented.

Each pair is judged in both orders (model 1 shown first, then model 2 shown
first); each order is its own verdict document, verdict_key = pair_key |
judge | order | attempt. `combine_orders` averages the two margins from model
1's point of view, so a judge that always prefers the first text ends up at a
tie. `compare_judge_evaluation` spends a call budget adaptively: a sparse
start (each model against a few others), then more pairs where the models'
rating intervals still overlap, until they separate or the budget is spent.

Modules: pairs (pairs, labels, constants), prompt (prompt, schema, parsing),
judging (one order, or both orders in one batch), outcomes (combined orders,
votes, position bias), family (the same-family check), compare (a whole
evaluation within a call budget, and the Results page's report).
"""

from __future__ import annotations

from .compare import CompareSummary, PairPlanner, PairwiseReport, compare_judge_evaluation, pairwise_report
from .family import model_family, same_family_warnings
from .judging import judge_pair, judge_pair_orders, verdict_key
from .outcomes import (
    all_outcomes,
    combine_orders,
    position_bias,
    verdict_margin,
    verdict_outcomes,
    vote_outcomes,
)
from .pairs import (
    DEFAULT_BUDGET_CHARS,
    DEFAULT_CALL_BUDGET,
    DEFAULT_GROUPS,
    DEFAULT_MAX_TOKENS,
    HUMAN,
    LABELS,
    MARGIN,
    MAX_FAILURES_IN_A_ROW,
    MIN_COMPARISONS,
    ORDERS,
    RAW_KEEP_CHARS,
    REASON_MAX_CHARS,
    CriterionGroup,
    Pair,
    build_pairs,
    contestant_names,
    load_responses,
    make_pair_key,
    now_utc,
    pairs_for,
    scope_id,
)
from .prompt import (
    SYSTEM_PROMPT,
    clip_text,
    earlier_briefs,
    normalize_label,
    pair_messages,
    parse_verdict,
    verdict_schema,
)

__all__ = [
    "DEFAULT_BUDGET_CHARS",
    "DEFAULT_CALL_BUDGET",
    "DEFAULT_GROUPS",
    "DEFAULT_MAX_TOKENS",
    "HUMAN",
    "LABELS",
    "MARGIN",
    "MAX_FAILURES_IN_A_ROW",
    "MIN_COMPARISONS",
    "ORDERS",
    "RAW_KEEP_CHARS",
    "REASON_MAX_CHARS",
    "SYSTEM_PROMPT",
    "CompareSummary",
    "CriterionGroup",
    "Pair",
    "PairPlanner",
    "PairwiseReport",
    "all_outcomes",
    "build_pairs",
    "clip_text",
    "combine_orders",
    "compare_judge_evaluation",
    "contestant_names",
    "earlier_briefs",
    "judge_pair",
    "judge_pair_orders",
    "load_responses",
    "make_pair_key",
    "model_family",
    "normalize_label",
    "now_utc",
    "pair_messages",
    "pairs_for",
    "pairwise_report",
    "parse_verdict",
    "position_bias",
    "same_family_warnings",
    "scope_id",
    "verdict_key",
    "verdict_margin",
    "verdict_outcomes",
    "verdict_schema",
    "vote_outcomes",
]
