"""Distributions as a few numbers per group: box-plot statistics and binned means.

A chart of every response sends every point to the browser; these summaries
send a handful of values per model, however many responses an evaluation has.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

BOX_COLUMNS = ["q1", "median", "q3", "lowerfence", "upperfence", "mean", "n"]
BINNED_COLUMNS = ["bin", "x", "y", "n"]


def box_stats(frame: pd.DataFrame, value: str, by: Sequence[str]) -> pd.DataFrame:
    """Per group: quartiles, Tukey whiskers (the furthest values within 1.5 IQR), mean and count.

    NaNs are left out; a group with no value has no row. Columns: the `by`
    columns, then q1, median, q3, lowerfence, upperfence, mean, n.
    """
    keys = list(by)
    data = frame[[*keys, value]].dropna(subset=[value])
    if data.empty:
        return pd.DataFrame(columns=[*keys, *BOX_COLUMNS])
    data = data.assign(**{value: data[value].astype(float)})
    grouped = data.groupby(keys, sort=True, observed=True)[value]
    stats = grouped.quantile([0.25, 0.5, 0.75]).unstack()
    stats.columns = ["q1", "median", "q3"]
    stats["mean"] = grouped.mean()
    stats["n"] = grouped.size()
    iqr = stats["q3"] - stats["q1"]
    limits = pd.DataFrame({"_low": stats["q1"] - 1.5 * iqr, "_high": stats["q3"] + 1.5 * iqr})
    rows = data.join(limits, on=keys)
    inside = rows[(rows[value] >= rows["_low"]) & (rows[value] <= rows["_high"])]
    fences = inside.groupby(keys, sort=True, observed=True)[value].agg(["min", "max"])
    stats["lowerfence"] = fences["min"]
    stats["upperfence"] = fences["max"]
    stats["n"] = stats["n"].astype(int)
    return stats.reset_index()[[*keys, *BOX_COLUMNS]]


def binned_means(frame: pd.DataFrame, x: str, y: str, by: str, bins: int = 12) -> pd.DataFrame:
    """Per group and x bin: mean x, mean y and count (rows missing x or y are left out).

    The bins are quantiles of x over all groups together, so each holds about
    the same number of rows and every group is cut at the same edges.
    Columns: `by`, bin (0-based), x, y, n.
    """
    data = frame[[by, x, y]].dropna(subset=[x, y])
    if data.empty:
        return pd.DataFrame(columns=[by, *BINNED_COLUMNS])
    xs = data[x].to_numpy(dtype=float)
    edges = np.unique(np.quantile(xs, np.linspace(0.0, 1.0, max(1, bins) + 1)))
    inner = edges[1:-1]
    data = data.assign(bin=np.searchsorted(inner, xs, side="right"), _x=xs, _y=data[y].astype(float))
    out = data.groupby([by, "bin"], sort=True, observed=True).agg(
        x=("_x", "mean"), y=("_y", "mean"), n=("_y", "size")
    )
    out["n"] = out["n"].astype(int)
    return out.reset_index()[[by, *BINNED_COLUMNS]]
