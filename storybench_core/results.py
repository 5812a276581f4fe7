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
"""

from __future__ import annotations

import json
import re
import weakref
import zlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import catalog
from .store.base import Doc, Store

SCORE_PREFIX = "score_"
WHY_PREFIX = "why_"

_RESPONSE_COLUMNS = (
    "evaluation_id",
    "model_name",
    "sequence",
    "run",
    "prompt_index",
    "prompt_name",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "generation_time_s",
    "tokens_per_s",
)
_PER_RESPONSE_KEEP = (
    "model_name",
    "sequence",
    "run",
    "prompt_index",
    "prompt_name",
    "words",
    "completion_tokens",
    "generation_time_s",
    "tokens_per_s",
)


# --- loading -------------------------------------------------------------------------------


def criteria_of(df: pd.DataFrame) -> list[str]:
    """The criterion ids that have score columns in a results frame."""
    return [c.removeprefix(SCORE_PREFIX) for c in df.columns if c.startswith(SCORE_PREFIX)]


def _score_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(SCORE_PREFIX)]


def _ids(evaluation_ids: str | Iterable[str] | None) -> list[str | None]:
    if evaluation_ids is None:
        return [None]
    if isinstance(evaluation_ids, str):
        return [evaluation_ids]
    return list(evaluation_ids)


def _criterion_order(judgements: Sequence[Doc]) -> list[str]:
    """Rubric criteria first (in rubric order), then any others found in stored judgements."""
    order = list(catalog.load_rubric().criterion_ids)
    seen = set(order)
    for j in judgements:
        for cid in j.get("scores") or ():
            if cid not in seen:
                seen.add(cid)
                order.append(cid)
    present: set[str] = set()
    for j in judgements:
        present.update(j.get("scores") or ())
        if len(present) == len(order):
            break
    return [c for c in order if c in present]


def _select_rubric(judgements: list[Doc], rubric_hash: str | None) -> list[Doc]:
    if rubric_hash == "all":
        return judgements
    wanted = rubric_hash or catalog.load_rubric().rubric_hash
    chosen = [j for j in judgements if j.get("rubric_hash") == wanted]
    # No judgement under the current rubric (it was edited): show what exists.
    return chosen if chosen or rubric_hash else judgements


def word_count(texts: Iterable[str | None]) -> np.ndarray:
    """Whitespace-separated words per text."""
    return np.fromiter((len(t.split()) if t else 0 for t in texts), dtype=np.int64)


def _doc_words(doc: Doc) -> int:
    """A response's words: the stored `words` field when the writer recorded it, else counted."""
    words = doc.get("words")
    return int(words) if words is not None else len((doc.get("response") or "").split())


# Optional fast projections a store may implement (duck-typed; not in the Store protocol yet):
#   list_response_stats(evaluation_id) -> list[tuple] in RESPONSE_STAT_FIELDS order, where `words`
#       is the stored words field (or the store's count of whitespace-separated words);
#   list_judgement_scores(evaluation_id, criteria) -> list[tuple] in JUDGEMENT_SCORE_FIELDS order
#       followed by one score per criterion (None when absent), read without decoding documents.
RESPONSE_STAT_FIELDS = ("id", *_RESPONSE_COLUMNS, "words", "error")
JUDGEMENT_SCORE_FIELDS = (
    "response_id", "judge_model", "attempt", "rubric_hash", "overall", "error", "retries", "structured_output",
)  # fmt: skip


def _non_empty(values: pd.Series) -> pd.Series:
    """True where a text column holds a non-empty string."""
    return values.fillna("").astype(str).str.len() > 0


_NUMERIC = {"run", "prompt_index", "prompt_tokens", "completion_tokens", "generation_time_s", "tokens_per_s",
            "words", "attempt", "overall", "retries"}  # fmt: skip
_CATEGORICAL = {"evaluation_id", "model_name", "sequence", "prompt_name", "finish_reason", "judge_model",
                "rubric_hash", "structured_output"}  # fmt: skip


def _columns_frame(rows: list[tuple[Any, ...]], names: list[str]) -> pd.DataFrame:
    """Rows → frame column by column (much faster than from_records); few-valued text as categories."""
    if not rows:
        return pd.DataFrame({n: pd.Series(dtype=float if n in _NUMERIC else object) for n in names})
    data: dict[str, Any] = {}
    for i, name in enumerate(names):
        values = np.array(
            [row[i] for row in rows],
            dtype=float if name in _NUMERIC or name.startswith(SCORE_PREFIX) else object,
        )
        if name in _CATEGORICAL:
            codes, uniques = pd.factorize(values)
            data[name] = pd.Categorical.from_codes(codes, uniques)
        else:
            data[name] = values
    return pd.DataFrame(data)


def _load_flat(
    store: Store, evaluation_ids: list[str | None], rubric_hash: str | None
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Responses and judgements through the store's flat projections, or None when it has none."""
    stats = getattr(store, "list_response_stats", None)
    scores = getattr(store, "list_judgement_scores", None)
    if stats is None or scores is None or rubric_hash == "all":
        return None
    rubric = catalog.load_rubric()
    wanted = rubric_hash or rubric.rubric_hash
    criteria = list(rubric.criterion_ids)
    score_cols = [SCORE_PREFIX + c for c in criteria]
    r_rows: list[tuple[Any, ...]] = []
    j_rows: list[tuple[Any, ...]] = []
    for eid in evaluation_ids:
        r_rows.extend(stats(eid))
        j_rows.extend(scores(eid, criteria))
    left = _columns_frame(r_rows, ["response_id", *RESPONSE_STAT_FIELDS[1:]])
    right = _columns_frame(j_rows, [*JUDGEMENT_SCORE_FIELDS, *score_cols])
    right = right[right["rubric_hash"] == wanted]
    if right.empty and j_rows and rubric_hash is None:
        return None  # judged only under an older rubric: the document path knows its criteria
    right = right.rename(columns={"error": "judgement_error"})
    right["judgement_error"] = (
        right["judgement_error"].astype(object).where(_non_empty(right["judgement_error"]), None)
    )
    for col in ("overall", *score_cols):
        right[col] = pd.to_numeric(right[col], errors="coerce").astype(float)
    right = right.drop(columns=[c for c in score_cols if right[c].isna().all()])
    right["judgement_failed"] = right["judgement_error"].notna() | right["overall"].isna()
    return left, right


def judgements_frame(judgements: Sequence[Doc], *, justifications: bool = False) -> pd.DataFrame:
    """Flatten judgement documents: one row each, a score_<criterion> column per criterion."""
    criteria = _criterion_order(judgements)
    data: dict[str, Any] = {
        "response_id": [j["response_id"] for j in judgements],
        "judgement_id": [j.get("id") for j in judgements],
        "judge_model": [j.get("judge_model") for j in judgements],
        "attempt": np.array([j.get("attempt") or 0 for j in judgements], dtype=np.int64),
        "rubric_hash": [j.get("rubric_hash") for j in judgements],
        "overall": np.array(
            [np.nan if j.get("overall") is None else j["overall"] for j in judgements], dtype=float
        ),
        "judgement_error": [j.get("error") or None for j in judgements],
        "retries": np.array([j.get("retries") or 0 for j in judgements], dtype=np.int64),
        "structured_output": [j.get("structured_output") for j in judgements],
    }
    scores = [j.get("scores") or {} for j in judgements]
    for cid in criteria:
        data[SCORE_PREFIX + cid] = np.array(
            [s[cid]["score"] if cid in s else np.nan for s in scores], dtype=float
        )
        if justifications:
            data[WHY_PREFIX + cid] = [s[cid].get("justification") if cid in s else None for s in scores]
    frame = pd.DataFrame(data)
    frame["judgement_failed"] = frame["judgement_error"].notna() | frame["overall"].isna()
    return frame


def _load_documents(
    store: Store,
    ids: list[str | None],
    include_text: bool,
    justifications: bool,
    include_failed_responses: bool,
    rubric_hash: str | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    responses: list[Doc] = []
    judgements: list[Doc] = []
    for eid in ids:
        responses.extend(store.list_responses(eid, include_messages=False))
        judgements.extend(store.list_judgements(eid))
    if not include_failed_responses:
        responses = [r for r in responses if not r.get("error")]
    base: dict[str, Any] = {"response_id": [r["id"] for r in responses]}
    for col in _RESPONSE_COLUMNS:
        base[col] = [r.get(col) for r in responses]
    base["words"] = np.fromiter((_doc_words(r) for r in responses), dtype=np.int64, count=len(responses))
    if include_text:
        base["prompt_text"] = [r.get("prompt_text") for r in responses]
        base["response"] = [r.get("response") or "" for r in responses]
    if include_failed_responses:
        base["response_error"] = [r.get("error") or None for r in responses]
    right = judgements_frame(_select_rubric(judgements, rubric_hash), justifications=justifications)
    return pd.DataFrame(base), right


def responses_frame(
    store: Store,
    evaluation_ids: str | Iterable[str] | None = None,
    *,
    include_text: bool = False,
    justifications: bool = False,
    include_failed_responses: bool = False,
    rubric_hash: str | None = None,
) -> pd.DataFrame:
    """Responses joined with their judgements: one row per response × judge × attempt.

    include_text adds the prompt and response text (for exports, text metrics
    and browsing; the leaderboard and charts don't need it, and without it a
    store's flat projections can be used). justifications adds a why_<criterion>
    column per criterion. rubric_hash: None keeps judgements made with the
    current rubric (or all of them when none were); "all" keeps every rubric
    version; a hash keeps that one. Responses whose generation failed are left
    out unless include_failed_responses.
    """
    ids = _ids(evaluation_ids)
    flat = None if include_text or justifications else _load_flat(store, ids, rubric_hash)
    if flat is not None:
        left, right = flat
        errors = left.pop("error")
        failed = _non_empty(errors)
        if include_failed_responses:
            left["response_error"] = errors.where(failed, None)
        else:
            left = left[~failed]
    else:
        left, right = _load_documents(
            store, ids, include_text, justifications, include_failed_responses, rubric_hash
        )
    # Same dtypes whichever path read the data: positions as nullable ints, measures as floats.
    for col in ("run", "prompt_index"):
        left[col] = pd.to_numeric(left[col], errors="coerce").astype("Int64")
    for col in ("prompt_tokens", "completion_tokens", "words", "generation_time_s", "tokens_per_s"):
        left[col] = pd.to_numeric(left[col], errors="coerce").astype(float)
    frame = left.merge(right, on="response_id", how="left", sort=False)
    frame["judgement_failed"] = frame["judgement_failed"].fillna(False).astype(bool)
    frame["attempt"] = frame["attempt"].astype("Int64")
    frame["retries"] = frame["retries"].astype("Int64")
    for col in _CATEGORICAL & set(frame.columns):
        if not isinstance(frame[col].dtype, pd.CategoricalDtype):
            frame[col] = frame[col].astype("category")
    return frame


# --- per-response scores ---------------------------------------------------------------------


def _with_judge(df: pd.DataFrame, judge: str | None) -> pd.DataFrame:
    return df if judge is None else df[df["judge_model"] == judge]


# per_response results by (id(frame), judge); frames are treated as read-only once built.
_PER_RESPONSE_MEMO: dict[tuple[int, str | None], tuple[weakref.ref[pd.DataFrame], pd.DataFrame]] = {}


def per_response(df: pd.DataFrame, judge: str | None = None) -> pd.DataFrame:
    """One row per response: its valid judgements averaged, plus how many judgements failed.

    The leaderboard and every chart frame start here, so the result is
    remembered per frame object (and dropped with it): build a new frame
    rather than editing one in place.
    """
    key = (id(df), judge)
    hit = _PER_RESPONSE_MEMO.get(key)
    if hit is not None and hit[0]() is df:
        return hit[1]
    out = _per_response(df, judge)
    _PER_RESPONSE_MEMO[key] = (weakref.ref(df), out)
    weakref.finalize(df, _PER_RESPONSE_MEMO.pop, key, None)
    return out


def _per_response(df: pd.DataFrame, judge: str | None) -> pd.DataFrame:
    scores = ["overall", *_score_columns(df)]
    base = df.drop_duplicates("response_id").set_index("response_id")
    keep = [c for c in _PER_RESPONSE_KEEP if c in base.columns]
    out = base[keep].copy()
    rows = _with_judge(df, judge)
    judged = rows[rows["judge_model"].notna()]
    valid = judged[~judged["judgement_failed"]]
    means = valid.groupby("response_id", sort=False)[scores].mean()
    out = out.join(means)
    counts = judged.groupby("response_id", sort=False)["judgement_failed"].agg(["size", "sum"])
    out["n_judgements"] = counts["size"].reindex(out.index, fill_value=0).astype(int)
    out["n_failed_judgements"] = counts["sum"].reindex(out.index, fill_value=0).astype(int)
    return out


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


def spearman(a: Iterable[float], b: Iterable[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with under 2 pairs or no variance."""
    pair = pd.DataFrame({"a": list(a), "b": list(b)}).dropna()
    if len(pair) < 2:
        return float("nan")
    ra, rb = pair["a"].rank().to_numpy(), pair["b"].rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _model_seed(seed: int, model: str) -> int:
    return seed * 1_000_003 + zlib.crc32(model.encode("utf-8"))


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
    cis = {
        model: bootstrap_ci(g["overall"].to_numpy(), n_boot, _model_seed(seed, model)) for model, g in grouped
    }
    board["ci_low"] = [cis[m][0] for m in board.index]
    board["ci_high"] = [cis[m][1] for m in board.index]
    board = board.join(grouped[_score_columns(per)].mean())
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
    cols = _score_columns(per)
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
    cols = ["overall", *_score_columns(df)]
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


# --- text metrics ----------------------------------------------------------------------------

_WORD_RE = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


@lru_cache(maxsize=8)
def _stock_regex(phrases: tuple[str, ...]) -> re.Pattern[str] | None:
    if not phrases:
        return None
    parts = sorted((re.escape(p.casefold().replace("’", "'")) for p in phrases), key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)")


def _ngram_stats(tokens: list[str], n: int) -> tuple[int, int]:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams), len(set(grams))


def text_metrics(text: str, stock_phrases: Sequence[str] | None = None) -> dict[str, float]:
    """Words, distinct-2/3 (unique n-grams ÷ n-grams), repeated 4-gram rate and stock-phrase count.

    Tokens are lower-cased words (letters/digits, inner apostrophes and hyphens
    kept). The repeated 4-gram rate is the share of 4-grams that repeat one
    seen earlier in the text (1 − distinct-4). Stock phrases come from
    catalog.load_stock_phrases() and are counted case-insensitively as whole words.
    A ratio without any n-gram is NaN.
    """
    phrases = tuple(catalog.load_stock_phrases() if stock_phrases is None else stock_phrases)
    tokens = _WORD_RE.findall(text.casefold().replace("’", "'"))
    out: dict[str, float] = {"words": len(tokens)}
    for n in (2, 3):
        total, unique = _ngram_stats(tokens, n)
        out[f"distinct_{n}"] = unique / total if total else float("nan")
    total, unique = _ngram_stats(tokens, 4)
    out["repeated_4gram_rate"] = (total - unique) / total if total else float("nan")
    pattern = _stock_regex(phrases)
    out["stock_phrase_count"] = len(pattern.findall(text.casefold().replace("’", "'"))) if pattern else 0
    return out


def text_metrics_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Text metrics for every response in a results frame (needs include_text=True)."""
    phrases = tuple(catalog.load_stock_phrases())
    per = df.drop_duplicates("response_id")
    rows = [text_metrics(t or "", phrases) for t in per["response"]]
    metrics = pd.DataFrame(rows, index=per.index)
    out = pd.concat([per[["response_id", "model_name", "sequence"]], metrics], axis=1)
    return out.reset_index(drop=True)


def text_metrics_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per-model means of the text metrics."""
    metrics = text_metrics_frame(df)
    cols = ["words", "distinct_2", "distinct_3", "repeated_4gram_rate", "stock_phrase_count"]
    return metrics.groupby("model_name", sort=True)[cols].mean().reset_index()


# --- compare ---------------------------------------------------------------------------------


def compare_frame(
    store: Store,
    evaluation_id: str,
    sequence: str,
    prompt_index: int,
    run: int,
    models: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Responses of several models to one sequence / prompt / run, each with scores and justifications.

    One row per model × judgement (a model nobody judged yet has one row with
    empty judge columns), in the order `models` gives.
    """
    responses = store.list_responses(
        evaluation_id, sequence=sequence, run=run, prompt_index=prompt_index, include_messages=False
    )
    if models is not None:
        wanted = list(models)
        responses = sorted(
            (r for r in responses if r["model_name"] in wanted), key=lambda r: wanted.index(r["model_name"])
        )
    judgements = [j for r in responses for j in store.list_judgements(evaluation_id, response_id=r["id"])]
    judged = judgements_frame(judgements, justifications=True)
    base = pd.DataFrame(
        {
            "response_id": [r["id"] for r in responses],
            "model_name": [r["model_name"] for r in responses],
            "prompt_name": [r.get("prompt_name") for r in responses],
            "prompt_text": [r.get("prompt_text") for r in responses],
            "response": [r.get("response") or "" for r in responses],
            "words": word_count(r.get("response") for r in responses),
            "completion_tokens": [r.get("completion_tokens") for r in responses],
            "tokens_per_s": [r.get("tokens_per_s") for r in responses],
            "finish_reason": [r.get("finish_reason") for r in responses],
            "response_error": [r.get("error") or None for r in responses],
        }
    )
    out = base.merge(judged, on="response_id", how="left", sort=False)
    out["judgement_failed"] = out["judgement_failed"].fillna(False).astype(bool)
    return out


# --- exports ---------------------------------------------------------------------------------


def export_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a results frame as CSV (UTF-8, no index)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def evaluation_json(store: Store, evaluation_id: str, *, include_messages: bool = False) -> dict[str, Any]:
    """The evaluation, its responses and, under each response, its judgements (plain JSON types)."""
    from .jobs import get_evaluation

    evaluation = get_evaluation(store, evaluation_id)
    by_response: dict[str, list[Doc]] = {}
    for j in store.list_judgements(evaluation_id):
        by_response.setdefault(j["response_id"], []).append(j)
    responses = []
    for r in store.list_responses(evaluation_id, include_messages=include_messages):
        items = sorted(
            by_response.get(r["id"], []), key=lambda j: (str(j.get("judge_model")), j.get("attempt") or 0)
        )
        responses.append(r | {"judgements": items})
    return _plain({"evaluation": evaluation, "responses": responses})


def export_json(
    store: Store, evaluation_id: str, path: str | Path, *, include_messages: bool = False
) -> Path:
    """Write responses joined with their judgements as one JSON document."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = evaluation_json(store, evaluation_id, include_messages=include_messages)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return path


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return "–"
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    if frame.empty:
        return "_(no data)_"
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, digits) for v in row) + " |")
    return "\n".join(lines)


def _excerpt(text: str, limit: int = 600) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown_report(store: Store, evaluation_id: str, *, n_samples: int = 2) -> str:
    """A Markdown report: leaderboard, per-criterion and per-sequence tables, best and worst responses."""
    from .jobs import get_evaluation

    evaluation = get_evaluation(store, evaluation_id)
    df = responses_frame(store, evaluation_id, include_text=True)
    board = leaderboard(df)
    lines = [
        f"# Storybench report: {evaluation.get('name')}",
        "",
        f"Evaluation `{evaluation_id}` · status {evaluation.get('status')} · config `{evaluation.get('config_hash')}` · "
        f"{df['response_id'].nunique()} responses · judges: {', '.join(sorted(df['judge_model'].dropna().unique())) or 'none'}",
        "",
        "## Leaderboard",
        "",
        "Mean overall score (mean of the criteria) with a 95% bootstrap confidence interval over responses.",
        "",
    ]
    if not board.empty:
        show = board[
            ["rank", "model_name", "overall", "ci_low", "ci_high", "n_responses", "n_failed_judgements"]
        ]
        show = show.assign(mean_words=board["mean_words"].round(0), tokens_per_s=board["mean_tokens_per_s"])
        lines.append(markdown_table(show))
    else:
        lines.append("_(no responses yet)_")
    crit = criterion_matrix(df)
    lines += [
        "",
        "## Per criterion",
        "",
        markdown_table(crit.reset_index()) if not crit.empty else "_(no scores yet)_",
    ]
    seq = per_sequence(df)
    if not seq.empty:
        wide = seq.pivot(index="model_name", columns="sequence", values="mean").reset_index()
        lines += ["", "## Per sequence", "", markdown_table(wide)]
    agreement = judge_agreement(df)
    if not agreement.empty:
        lines += ["", "## Judge agreement", "", markdown_table(agreement)]
    per = per_response(df)
    scored = per[per["overall"].notna()].sort_values("overall", ascending=False)
    if not scored.empty:
        texts = df.drop_duplicates("response_id").set_index("response_id")["response"]
        lines += ["", "## Best and worst responses", ""]
        picks = [("Best", scored.head(n_samples)), ("Worst", scored.tail(n_samples).iloc[::-1])]
        for label, rows in picks:
            for rid, row in rows.iterrows():
                lines += [
                    f"### {label}: {row['model_name']} · {row['sequence']} · run {int(row['run'])} · "
                    f"prompt {int(row['prompt_index']) + 1} — overall {row['overall']:.2f}",
                    "",
                    "> " + _excerpt(str(texts.get(rid, ""))),
                    "",
                ]
    return "\n".join(lines).rstrip() + "\n"
