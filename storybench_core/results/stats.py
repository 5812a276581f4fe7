"""Statistics: bootstrap confidence intervals and rank correlation."""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np
import pandas as pd

# --- statistics ------------------------------------------------------------------------------


def bootstrap_ci(
    values: Iterable[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (NaNs dropped).

    Resampling n values with replacement is the same as drawing multinomial
    counts over the distinct values; with few distinct values (scores are
    means of small integers) that costs n_boot × k instead of n_boot × n.
    """
    x = np.asarray(list(values) if not isinstance(values, np.ndarray | pd.Series) else values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return (np.nan, np.nan)
    if n == 1 or np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    uniq, counts = np.unique(x, return_counts=True)
    if len(uniq) * 4 < n:
        draws = rng.multinomial(n, counts / n, size=n_boot)
        means = draws @ uniq / n
    else:
        means = np.empty(n_boot)
        step = max(1, 4_000_000 // n)
        for start in range(0, n_boot, step):
            k = min(step, n_boot - start)
            means[start : start + k] = x[rng.integers(0, n, size=(k, n))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return (float(low), float(high))


def nested_bootstrap_ci(
    values: np.ndarray, groups: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean over responses, resampling responses *and*, within each drawn
    response, one of its judgements (attempts, judges): the judge's own noise widens the interval.

    values: every valid judgement's overall score; groups: its response (any hashable code), same
    length. A response's statistic is its mean over judgements, as in the leaderboard's point estimate.
    """
    values = np.asarray(values, dtype=float)
    keep = ~np.isnan(values)
    values, groups = values[keep], np.asarray(groups)[keep]
    if len(values) == 0:
        return (np.nan, np.nan)
    order = np.argsort(groups, kind="stable")
    values, groups = values[order], groups[order]
    _, starts, counts = np.unique(groups, return_index=True, return_counts=True)
    n = len(starts)
    if np.all(counts == 1):
        return bootstrap_ci(values, n_boot, seed, level)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, 2_000_000 // n)
    for start in range(0, n_boot, step):
        k = min(step, n_boot - start)
        picked = rng.integers(0, n, size=(k, n))
        within = (rng.random((k, n)) * counts[picked]).astype(np.int64)
        means[start : start + k] = values[starts[picked] + within].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return (float(low), float(high))


def model_seed(seed: int, model: str) -> int:
    """A reproducible bootstrap seed per model (so adding a model does not move the others' CIs)."""
    return seed * 1_000_003 + zlib.crc32(model.encode("utf-8"))


def spearman(a: Iterable[float], b: Iterable[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with under 2 pairs or no variance."""
    pair = pd.DataFrame({"a": list(a), "b": list(b)}).dropna()
    if len(pair) < 2:
        return float("nan")
    ra, rb = pair["a"].rank().to_numpy(), pair["b"].rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
