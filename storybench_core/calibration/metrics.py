"""The reliability card's figures, from a judge's scores of ladders whose order is known.

Inputs are plain records (so a test can compute the same by hand):
- RungScore: one rubric judgement of one rung (overall None when the judgement failed);
- PairVerdict: one pairwise verdict between adjacent rungs, in one order.
Every figure is None when there was nothing to compute it from, never a made-up number.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

SEPARATES = "separates"
WEAK = "weak"
CANNOT = "cannot order a degraded ladder"
VERDICTS = (SEPARATES, WEAK, CANNOT)

# The verdict's thresholds (README, "Trusting the judge").
SEPARATES_ACCURACY, SEPARATES_TAU, SEPARATES_SEPARABILITY = 0.8, 0.6, 0.5
CANNOT_ACCURACY, CANNOT_TAU = 0.5, 0.2
MIN_VALID_SHARE = 0.5
POSITION_BIAS_WARN = 0.75  # first-shown text wins this share of decided verdicts or more


@dataclass(frozen=True)
class RungScore:
    ladder: str
    level: int  # 0 = the original; higher = more degraded
    attempt: int
    overall: float | None
    scores: dict[str, float] = field(default_factory=dict)  # criterion → score


@dataclass(frozen=True)
class PairVerdict:
    ladder: str
    better: int  # the less degraded rung's level
    worse: int
    better_shown_first: bool
    winner: str | None  # "A", "B", "tie", or None when the verdict failed


@dataclass
class Card:
    """A judge's reliability card (stored as a dict with its identity)."""

    verdict: str
    reasons: list[str]
    ladders: int
    rungs: int
    attempts: int
    judgements: int
    failed_judgements: int
    ladder_accuracy: float | None
    kendall_tau: float | None
    separability: float | None
    rung_means: list[dict[str, Any]]
    criterion_checks: list[dict[str, Any]]
    retested: bool
    retest_mean_abs_diff: float | None
    retest_identical_share: float | None
    pairwise_pairs: int = 0
    pairwise_accuracy: float | None = None
    position_flip_rate: float | None = None
    first_position_preference: float | None = None
    self_preference: float | None = None
    family_preference: float | None = None
    vote_agreement: float | None = None
    vote_pairs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kendall_tau_b(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Kendall's τ-b (ties in either variable handled); None when one side is constant."""
    n = len(xs)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = xs[i] - xs[j], ys[i] - ys[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    if denominator == 0:
        return None
    return (concordant - discordant) / denominator


def _interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): a normal-approximation 95% interval of the mean."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _mean(values: Iterable[float]) -> float | None:
    items = list(values)
    return statistics.fmean(items) if items else None


def compute_card(
    scores: Sequence[RungScore],
    verdicts: Sequence[PairVerdict] = (),
    *,
    transforms: dict[int, tuple[str, str | None]] | None = None,
    retested: bool,
    self_preference: float | None = None,
    family_preference: float | None = None,
    vote_agreement: tuple[float, int] | None = None,
) -> Card:
    """The card from every rung judgement and pairwise verdict.

    transforms: level → (transform id, the criterion it should lower first, or None).
    """
    valid = [s for s in scores if s.overall is not None]
    ladders = sorted({s.ladder for s in scores})
    levels = sorted({s.level for s in scores})
    attempts = max((s.attempt for s in scores), default=0)
    by_rung: dict[tuple[str, int], list[RungScore]] = defaultdict(list)
    for s in valid:
        by_rung[(s.ladder, s.level)].append(s)
    means = {
        key: statistics.fmean(x.overall for x in group if x.overall is not None)
        for key, group in by_rung.items()
    }

    # Ladder accuracy: adjacent rungs of one ladder, the better one scored strictly higher.
    ordered = compared = 0
    taus: list[float] = []
    for ladder in ladders:
        for k in levels[:-1]:
            a, b = means.get((ladder, k)), means.get((ladder, k + 1))
            if a is None or b is None:
                continue
            compared += 1
            ordered += int(a > b)
        present = [k for k in levels if (ladder, k) in means]
        if len(present) >= 2:
            tau = kendall_tau_b([-k for k in present], [means[(ladder, k)] for k in present])
            taus.append(0.0 if tau is None else tau)  # a constant judge orders nothing
    accuracy = ordered / compared if compared else None
    tau = _mean(taus)

    # Rung means over ladders and attempts, and whether adjacent intervals overlap.
    rung_means: list[dict[str, Any]] = []
    intervals: dict[int, tuple[float, float, float]] = {}
    for k in levels:
        values = [s.overall for s in valid if s.level == k and s.overall is not None]
        if values:
            intervals[k] = _interval(values)
            mean, low, high = intervals[k]
            rung_means.append(
                {
                    "level": k,
                    "mean": round(mean, 3),
                    "low": round(low, 3),
                    "high": round(high, 3),
                    "n": len(values),
                }
            )
    gaps = [(k, k + 1) for k in levels[:-1] if k in intervals and k + 1 in intervals]
    separated = sum(1 for k, j in gaps if intervals[k][1] > intervals[j][2])
    separability = separated / len(gaps) if gaps else None

    # Per-criterion checks: the criterion a transform should hit drops, and at least as much as the rest.
    checks: list[dict[str, Any]] = []
    for level, (transform, criterion) in sorted((transforms or {}).items()):
        if criterion is None or level == 0:
            continue
        passed = total = 0
        for ladder in ladders:
            above, below = by_rung.get((ladder, level - 1)), by_rung.get((ladder, level))
            if not above or not below:
                continue
            drops: dict[str, float] = {}
            for name in {c for s in above + below for c in s.scores}:
                up = [s.scores[name] for s in above if name in s.scores]
                down = [s.scores[name] for s in below if name in s.scores]
                if up and down:
                    drops[name] = statistics.fmean(up) - statistics.fmean(down)
            if criterion not in drops:
                continue
            total += 1
            others = [v for name, v in drops.items() if name != criterion]
            passed += int(
                drops[criterion] > 0 and drops[criterion] >= (statistics.fmean(others) if others else 0)
            )
        checks.append(
            {"transform": transform, "criterion": criterion, "ladders": total, "passed": passed,
             "share": round(passed / total, 3) if total else None}
        )  # fmt: skip

    # Test–retest over attempts of the same rung.
    diffs: list[float] = []
    identical = groups = 0
    for group in by_rung.values():
        if len(group) < 2:
            continue
        values = [g.overall for g in group if g.overall is not None]
        center = statistics.fmean(values)
        diffs.append(statistics.fmean(abs(v - center) for v in values))
        groups += 1
        identical += int(len(set(values)) == 1)
    retest_diff = _mean(diffs) if retested else None
    retest_same = (identical / groups if groups else None) if retested else None

    # Pairwise: both orders of each adjacent pair.
    by_pair: dict[tuple[str, int, int], list[PairVerdict]] = defaultdict(list)
    for pv in verdicts:
        by_pair[(pv.ladder, pv.better, pv.worse)].append(pv)
    decided = [pv for pv in verdicts if pv.winner in ("A", "B")]
    first = sum(1 for pv in decided if pv.winner == "A") / len(decided) if decided else None
    flips = both = right = judged_pairs = 0
    for pair_group in by_pair.values():
        picks = []  # +1 the better rung won, -1 the worse, 0 tie, per valid verdict
        for pv in pair_group:
            if pv.winner is None:
                continue
            if pv.winner == "tie":
                picks.append(0)
            else:
                better_won = (pv.winner == "A") == pv.better_shown_first
                picks.append(1 if better_won else -1)
        if not picks:
            continue
        judged_pairs += 1
        right += int(sum(picks) > 0)
        if len(picks) == 2:
            both += 1
            flips += int(picks[0] != picks[1])
    pairwise_accuracy = right / judged_pairs if judged_pairs else None
    flip_rate = flips / both if both else None

    failed = len(scores) - len(valid)
    card = Card(
        verdict=CANNOT,
        reasons=[],
        ladders=len(ladders),
        rungs=len(levels),
        attempts=attempts,
        judgements=len(scores),
        failed_judgements=failed,
        ladder_accuracy=_round(accuracy),
        kendall_tau=_round(tau),
        separability=_round(separability),
        rung_means=rung_means,
        criterion_checks=checks,
        retested=retested,
        retest_mean_abs_diff=_round(retest_diff),
        retest_identical_share=_round(retest_same),
        pairwise_pairs=judged_pairs,
        pairwise_accuracy=_round(pairwise_accuracy),
        position_flip_rate=_round(flip_rate),
        first_position_preference=_round(first),
        self_preference=_round(self_preference),
        family_preference=_round(family_preference),
        vote_agreement=_round(vote_agreement[0]) if vote_agreement else None,
        vote_pairs=vote_agreement[1] if vote_agreement else 0,
    )
    card.verdict, card.reasons = judge_verdict(card)
    return card


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def judge_verdict(card: Card) -> tuple[str, list[str]]:
    """One verdict in words, and what the judge failed (the warning's text)."""
    reasons: list[str] = []
    valid_share = 1 - card.failed_judgements / card.judgements if card.judgements else 0.0
    if valid_share < MIN_VALID_SHARE:
        reasons.append(f"only {valid_share:.0%} of its calibration judgements were valid")
    if card.ladder_accuracy is not None and card.ladder_accuracy < SEPARATES_ACCURACY:
        reasons.append(
            f"it ordered {card.ladder_accuracy:.0%} of adjacent rungs right (target {SEPARATES_ACCURACY:.0%})"
        )
    if card.rung_means and len({r["mean"] for r in card.rung_means}) == 1:
        reasons.append(f"it gave every rung the same mean score ({card.rung_means[0]['mean']:.2f})")
    if card.kendall_tau is not None and card.kendall_tau < SEPARATES_TAU:
        reasons.append(
            f"Kendall τ against the known order is {card.kendall_tau:.2f} (target {SEPARATES_TAU})"
        )
    if card.separability is not None and card.separability < SEPARATES_SEPARABILITY:
        reasons.append(f"the intervals of {1 - card.separability:.0%} of adjacent rungs overlap")
    if card.first_position_preference is not None and card.first_position_preference >= POSITION_BIAS_WARN:
        reasons.append(
            f"in pairs it picked the first-shown text {card.first_position_preference:.0%} of the time"
        )
    if card.position_flip_rate is not None and card.position_flip_rate > 0.5:
        reasons.append(f"swapping the two texts changed its pick in {card.position_flip_rate:.0%} of pairs")
    if not card.retested:
        reasons.append("it was not retested (one attempt, or attempts that cannot differ)")
    accuracy, tau = card.ladder_accuracy, card.kendall_tau
    if (
        valid_share < MIN_VALID_SHARE
        or accuracy is None
        or accuracy < CANNOT_ACCURACY
        or (tau or 0.0) < CANNOT_TAU
    ):
        return CANNOT, reasons
    good = (
        accuracy >= SEPARATES_ACCURACY
        and (tau or 0.0) >= SEPARATES_TAU
        and (card.separability or 0.0) >= SEPARATES_SEPARABILITY
        and (card.pairwise_accuracy is None or card.pairwise_accuracy >= 0.7)
    )
    return (SEPARATES if good else WEAK), reasons
