"""A whole evaluation judged pairwise within a call budget, and the report the Results page shows."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..config import GenerationSettingsConfig, JudgeConfig, ModelSpec
from ..errors import DuplicateError, JudgeError
from ..jobqueue import evaluation_config, get_evaluation
from ..judge import judge_width
from ..ratings import fit_ratings, intervals_overlap
from ..records import VerdictRecord
from ..runner import ModelPool
from ..stopping import stop_check
from ..store.base import Doc, Store
from .family import same_family_warnings
from .judging import judge_pair, judge_pair_orders
from .outcomes import all_outcomes, position_bias, verdict_outcomes
from .pairs import (
    DEFAULT_BUDGET_CHARS,
    DEFAULT_CALL_BUDGET,
    DEFAULT_GROUPS,
    DEFAULT_MAX_TOKENS,
    HUMAN,
    MAX_FAILURES_IN_A_ROW,
    MIN_COMPARISONS,
    ORDERS,
    CriterionGroup,
    Pair,
    build_pairs,
    load_responses,
    scope_id,
)

EventFn = Callable[..., None]

# --- adaptive selection ----------------------------------------------------------------------


class PairPlanner:
    """Which pair to judge next: a sparse start, then pairs of models whose intervals still overlap.

    A bootstrap over a handful of outcomes gives intervals that are too narrow,
    so two models count as separated only once each has `min_comparisons`.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        done: set[str],
        initial_opponents: int = 2,
        seed: int = 0,
        min_comparisons: int = MIN_COMPARISONS,
    ):
        rng = random.Random(seed)
        self.by_models: dict[tuple[str, str], list[Pair]] = {}
        for p in pairs:
            self.by_models.setdefault(p.models, []).append(p)
        for slots in self.by_models.values():
            rng.shuffle(slots)  # spread the judged slots over sequences, runs and turns
        self.done = set(done)
        self.judged = Counter(p.models for p in pairs if p.pair_key in done)
        self.models = sorted({m for key in self.by_models for m in key})
        rng.shuffle(self.models)
        self.initial_opponents = initial_opponents
        self.min_comparisons = min_comparisons

    def _open(self, models: tuple[str, str]) -> Pair | None:
        return next((p for p in self.by_models.get(models, []) if p.pair_key not in self.done), None)

    def initial(self) -> list[Pair]:
        """One pair per edge of a ring over the models: each meets about `initial_opponents` others."""
        n = len(self.models)
        steps = range(1, min(max(1, (self.initial_opponents + 1) // 2), max(1, n // 2)) + 1)
        edges: list[tuple[str, str]] = []
        for step in steps:
            for i, m in enumerate(self.models):
                a, b = sorted((m, self.models[(i + step) % n]))
                if a != b and (a, b) not in edges:
                    edges.append((a, b))
        picks = []
        for key in edges:
            if self.judged[key]:
                continue
            pair = self._open(key)  # None when the two never answered the same brief
            if pair is not None:
                picks.append(pair)
        return picks

    def next(self, ratings: pd.DataFrame) -> tuple[Pair | None, str]:
        """The next pair, or None with why: 'separated' (no overlap left) or 'exhausted' (no pair left)."""
        rows = (
            ratings.set_index("model")
            if not ratings.empty
            else pd.DataFrame(columns=["rating", "comparisons"])
        )
        rating, seen = rows["rating"], rows["comparisons"]

        def unresolved(key: tuple[str, str]) -> bool:
            few = min(seen.get(key[0], 0), seen.get(key[1], 0)) < self.min_comparisons
            return few or intervals_overlap(ratings, *key)

        overlapping = [key for key in self.by_models if unresolved(key)]
        if not overlapping:
            return None, "separated"
        candidates = []
        for key in overlapping:
            pair = self._open(key)
            if pair is None:
                continue
            gap = abs(rating.get(key[0], 1000.0) - rating.get(key[1], 1000.0))
            candidates.append((self.judged[key], gap, key, pair))
        if not candidates:
            return None, "exhausted"
        candidates.sort(key=lambda c: (c[0], c[1], c[2]))
        return candidates[0][3], ""

    def mark(self, pair: Pair) -> None:
        self.done.add(pair.pair_key)
        self.judged[pair.models] += 1


# --- a whole evaluation ----------------------------------------------------------------------


@dataclass
class CompareSummary:
    """What a pairwise judging pass did, and the ratings it ended with."""

    judge: str
    scope: str
    calls: int = 0
    verdicts: int = 0
    failed: int = 0
    pairs_judged: int = 0
    stop_reason: str = ""
    warnings: list[str] = field(default_factory=list)
    ratings: pd.DataFrame = field(default_factory=pd.DataFrame)
    position_bias: pd.DataFrame = field(default_factory=pd.DataFrame)


def compare_judge_evaluation(
    store: Store,
    evaluation_id: str | Sequence[str],
    judge_spec: ModelSpec | None = None,
    pool: ModelPool | None = None,
    *,
    budget: int = DEFAULT_CALL_BUDGET,
    event: EventFn | None = None,
    groups: Sequence[CriterionGroup] = DEFAULT_GROUPS,
    budget_chars: int = DEFAULT_BUDGET_CHARS,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    cfg: JudgeConfig | None = None,
    generation: GenerationSettingsConfig | None = None,
    initial_opponents: int = 2,
    seed: int = 0,
    n_boot: int = 1000,
    should_stop: Callable[[], bool] | None = None,
) -> CompareSummary:
    """Judge pairs of an evaluation (or across evaluations) adaptively within `budget` judge calls.

    A call is one request to the judge model, retries included; a pair needs
    two (one per order), so a new pair starts only while two calls are left.
    Pairs this judge already judged are reused, so a second pass continues.
    The judge defaults to the (first) evaluation's configured judge.
    """
    ids = [evaluation_id] if isinstance(evaluation_id, str) else list(evaluation_id)
    configs = [evaluation_config(get_evaluation(store, eid)) for eid in ids]
    cfg = cfg or configs[0].judge
    spec = judge_spec or next(iter(cfg.judges()), None)
    if spec is None:
        raise JudgeError(
            f"evaluation {ids[0]} has no judge configured; choose one (e.g. `storybench compare-judge "
            f"{ids[0]} --judge bundled`)"
        )
    generation = generation or configs[0].generation
    scope = scope_id(ids)
    emit = event or (lambda level, message, **f: store.append_event(ids[0], level, message, **f))
    stop = should_stop or (lambda: False)
    judge_name = spec.display_name
    summary = CompareSummary(judge=judge_name, scope=scope)

    responses = load_responses(store, ids)
    pairs = build_pairs(responses.values(), scope)
    if not pairs:
        raise JudgeError(
            f"nothing to compare in {scope}: pairwise judging needs at least two models with stored "
            "responses to the same sequence, run and prompt"
        )
    summary.warnings = same_family_warnings(spec, [m for c in configs for m in c.models])
    for warning in summary.warnings:
        emit("warning", f"pairwise judge: {warning}")

    existing = store.list_verdicts(scope, judge=judge_name)
    orders_done: dict[str, set[str]] = {}
    for v in existing:
        orders_done.setdefault(v["pair_key"], set()).add(v["order"])
    done = {k for k, orders in orders_done.items() if orders >= set(ORDERS)}
    partial = [p for p in pairs if p.pair_key in orders_done and p.pair_key not in done]
    planner = PairPlanner(pairs, done, initial_opponents, seed)
    queue = partial + [p for p in planner.initial() if p not in partial]
    verdicts = list(existing)

    own_pool = pool is None
    pool = pool or ModelPool()
    try:
        emit("info", f"pairwise judge {judge_name}: {len(pairs)} candidate pairs, budget {budget} calls")
        with stop_check(stop):  # Stop works during the load too
            backend, _fresh = pool.get(spec, generation)
        use_batch = judge_width(backend, generation, 1)[0] > 1
        failures_in_a_row = 0
        while True:
            if stop():
                summary.stop_reason = "stopped"
                break
            pair: Pair | None
            if queue:
                pair, why = queue.pop(0), ""
            else:
                ratings = fit_ratings(verdict_outcomes(verdicts), n_boot=200, seed=seed)
                pair, why = planner.next(ratings)
            if pair is None:
                summary.stop_reason = why
                break
            missing = [o for o in ORDERS if o not in orders_done.get(pair.pair_key, set())]
            if summary.calls + len(missing) > budget:
                summary.stop_reason = "budget"
                break
            options: dict[str, Any] = dict(
                groups=groups, budget_chars=budget_chars, max_tokens=max_tokens,
                temperature=cfg.temperature, max_retries=cfg.max_retries,
            )  # fmt: skip
            if use_batch:  # both orders together (a local model also checks the grammar after sampling)
                new_verdicts = judge_pair_orders(backend, judge_name, pair, missing, responses, **options)
            else:
                new_verdicts = [
                    judge_pair(backend, judge_name, pair, o, responses, **options) for o in missing
                ]
            for order, verdict in zip(missing, new_verdicts, strict=True):
                summary.calls += int(verdict["calls"])
                if not _store_verdict(store, verdict):
                    continue
                verdicts.append(verdict)
                orders_done.setdefault(pair.pair_key, set()).add(order)
                summary.verdicts += 1
                summary.failed += bool(verdict["error"])
                failures_in_a_row = failures_in_a_row + 1 if verdict["error"] else 0
                emit(*_verdict_line(verdict))
            planner.mark(pair)
            summary.pairs_judged += 1
            if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                summary.stop_reason = "failing"
                emit(
                    "error",
                    f"pairwise judge {judge_name}: {failures_in_a_row} verdicts in a row failed; stopped",
                )
                break
    finally:
        if own_pool:
            pool.release()
    summary.ratings = fit_ratings(verdict_outcomes(verdicts), n_boot=n_boot, seed=seed)
    summary.position_bias = position_bias(verdicts)
    emit(
        "info" if not summary.failed else "warning",
        f"pairwise judging finished ({summary.stop_reason}): {summary.pairs_judged} pairs, "
        f"{summary.verdicts} verdicts ({summary.failed} failed), {summary.calls} calls",
    )
    return summary


def _store_verdict(store: Store, verdict: Doc) -> bool:
    """Add a verdict; False when the same key appeared meanwhile (another process judged it)."""
    VerdictRecord.model_validate(verdict)  # a malformed verdict is a bug: refuse it before it is stored
    try:
        store.add_verdict(verdict)
    except DuplicateError:
        return False
    return True


def _verdict_line(verdict: Doc) -> tuple[str, str]:
    where = (
        f"{verdict['sequence']} · run {verdict['run']} · prompt {int(verdict['prompt_index']) + 1}: "
        f"{verdict['model_a']} (A) vs {verdict['model_b']} (B)"
    )
    if verdict.get("error"):
        return "warning", f"pairwise verdict failed for {where}: {verdict['error']}"
    labels = ", ".join(f"{k} {v}" for k, v in (verdict.get("groups") or {}).items())
    return "info", f"pairwise verdict for {where}: {labels}"


# --- what the Results page shows -------------------------------------------------------------


@dataclass
class PairwiseReport:
    """Ratings per judge (and for the human votes), position bias, and human-vs-judge agreement."""

    scope: str
    ratings: dict[str, pd.DataFrame]
    pooled: pd.DataFrame
    position_bias: pd.DataFrame
    human_agreement: pd.DataFrame
    outcomes: pd.DataFrame


def pairwise_report(
    store: Store, evaluation_id: str | Sequence[str], *, n_boot: int = 1000
) -> PairwiseReport:
    """Everything pairwise about an evaluation, for the Results page (one call, plain frames)."""
    from ..ratings import human_judge_agreement

    scope = scope_id(evaluation_id)
    verdicts = store.list_verdicts(scope)
    outcomes = all_outcomes(store, scope)
    ratings = {
        judge: fit_ratings(group, n_boot=n_boot)
        for judge, group in (outcomes.groupby("judge", sort=True) if not outcomes.empty else [])
    }
    judges_only = outcomes[outcomes["judge"] != HUMAN] if not outcomes.empty else outcomes
    return PairwiseReport(
        scope=scope,
        ratings=ratings,
        pooled=fit_ratings(judges_only, n_boot=n_boot),
        position_bias=position_bias(verdicts),
        human_agreement=human_judge_agreement(outcomes),
        outcomes=outcomes,
    )
