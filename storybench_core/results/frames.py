"""Loading: stored responses and judgements as one pandas frame, and per-response scores."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .. import catalog
from ..store.base import Doc, Store

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


def score_columns(df: pd.DataFrame) -> list[str]:
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


# The two flat projections of the Store protocol (store/base.py; looked up with getattr, so a wrapper
# that hides them, as bench/results_scale.py does for its baseline, gets the document path):
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


def _object_table(rows: list[tuple[Any, ...]], width: int) -> np.ndarray:
    """Rows as one 2-D object array (numpy transposes in C, several times faster than per-column lists)."""
    try:
        table = np.array(rows, dtype=object)
    except ValueError:  # a value that is itself a sequence of another length
        table = None
    if table is None or table.shape != (len(rows), width):
        table = np.empty((len(rows), width), dtype=object)
        for i, row in enumerate(rows):
            for j in range(width):
                table[i, j] = row[j]
    return table


def _columns_frame(rows: list[tuple[Any, ...]], names: list[str]) -> pd.DataFrame:
    """Rows → frame column by column (much faster than from_records); few-valued text as categories."""
    if not rows:
        return pd.DataFrame({n: pd.Series(dtype=float if n in _NUMERIC else object) for n in names})
    table = _object_table(rows, len(names))
    data: dict[str, Any] = {}
    for i, name in enumerate(names):
        values = table[:, i]
        if name in _NUMERIC or name.startswith(SCORE_PREFIX):
            values = values.astype(float)  # None → NaN
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
    scores = ["overall", *score_columns(df)]
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
