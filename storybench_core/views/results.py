"""What the Results page shows: the response table, its filters, per-model figures for the charts.

Scores, leaderboards and compare views come from results.py (the judge's
side); this module only covers the generated responses themselves. The page
works from `response_stats` (the store's flat projection: no texts), shows
the table a page at a time and reads texts only for the rows on screen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..errors import StoreError
from ..results.distribution import box_stats
from ..results.export import csv_bytes as formula_safe_csv
from ..store.base import RESPONSE_STAT_FIELDS, Doc, Store

PREVIEW_CHARS = 120

RESPONSE_COLUMNS = [
    "id",
    "evaluation_id",
    "model",
    "source",
    "sequence",
    "run",
    "prompt",
    "prompt_name",
    "words",
    "completion_tokens",
    "generation_time_s",
    "tokens_per_s",
    "finish_reason",
    "error",
    "preview",
    "response",
]

# Columns the table on the page shows, in order.
TABLE_COLUMNS = [
    "model",
    "source",
    "sequence",
    "run",
    "prompt",
    "prompt_name",
    "words",
    "completion_tokens",
    "generation_time_s",
    "tokens_per_s",
    "finish_reason",
    "error",
    "preview",
]

# (column, axis title) of the per-model charts.
CHART_METRICS = (
    ("words", "Length (words)"),
    ("generation_time_s", "Generation time (s)"),
    ("tokens_per_s", "Tokens per second"),
)


def model_source(model_ref: Mapping[str, Any] | None) -> str:
    """'API' for endpoint models, 'local' for GGUF files, 'fake' for the test double."""
    kind = (model_ref or {}).get("kind", "")
    return {"api": "API", "fake": "fake"}.get(kind, "local")


def word_count(text: str | None) -> int:
    return len((text or "").split())


def _preview(text: str | None) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= PREVIEW_CHARS else flat[: PREVIEW_CHARS - 1] + "…"


def responses_frame(docs: Iterable[Doc]) -> pd.DataFrame:
    """One row per stored response (messages not needed), in store order."""
    rows = [
        {
            "id": d["id"],
            "evaluation_id": d.get("evaluation_id", ""),
            "model": d.get("model_name", ""),
            "source": model_source(d.get("model_ref")),
            "sequence": d.get("sequence", ""),
            "run": int(d.get("run") or 0),
            "prompt": int(d.get("prompt_index") or 0) + 1,
            "prompt_name": d.get("prompt_name") or "",
            "words": word_count(d.get("response")),
            "completion_tokens": int(d.get("completion_tokens") or 0),
            "generation_time_s": float(d.get("generation_time_s") or 0.0),
            "tokens_per_s": float(d.get("tokens_per_s") or 0.0),
            "finish_reason": d.get("finish_reason") or "",
            "error": d.get("error") or "",
            "preview": _preview(d.get("error") or d.get("response")),
            "response": d.get("response") or "",
        }
        for d in docs
    ]
    return pd.DataFrame(rows, columns=RESPONSE_COLUMNS)


# --- the table without texts: the store's flat projection -----------------------------------

STAT_COLUMNS = [c for c in RESPONSE_COLUMNS if c not in ("preview", "response")]
_STAT_NAMES = {"model_name": "model", "prompt_index": "prompt"}
_STAT_TEXT = ("evaluation_id", "model", "sequence", "prompt_name", "finish_reason")


def _numbers(values: Any, kind: type) -> pd.Series:
    return pd.to_numeric(pd.Series(values), errors="coerce").fillna(0).astype(kind)


def stats_frame(
    rows: Sequence[tuple[Any, ...]], sources: Mapping[tuple[str, str], str] | None = None
) -> pd.DataFrame:
    """responses_frame's columns less preview and response, from Store.list_response_stats tuples.

    sources: (evaluation id, model) → 'API' / 'local' / 'fake' (model_sources); 'local' when unknown.
    """
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in STAT_COLUMNS})
    table = np.array(rows, dtype=object)  # one C-level transpose instead of a list per column
    raw = {_STAT_NAMES.get(f, f): table[:, i] for i, f in enumerate(RESPONSE_STAT_FIELDS)}
    frame = pd.DataFrame(
        {
            "id": raw["id"].astype(str),
            **{c: pd.Series(raw[c], dtype=object).fillna("").astype(str) for c in (*_STAT_TEXT, "error")},
            "run": _numbers(raw["run"], int),
            "prompt": _numbers(raw["prompt"], int) + 1,
            "words": _numbers(raw["words"], int),
            "completion_tokens": _numbers(raw["completion_tokens"], int),
            "generation_time_s": _numbers(raw["generation_time_s"], float),
            "tokens_per_s": _numbers(raw["tokens_per_s"], float),
        }
    )
    known = pd.DataFrame(
        [(e, m, v) for (e, m), v in (sources or {}).items()], columns=["evaluation_id", "model", "source"]
    )
    frame = frame.merge(known, on=["evaluation_id", "model"], how="left", sort=False)
    frame["source"] = frame["source"].fillna("local").astype(str)
    return frame[STAT_COLUMNS]


def _readable(store: Store, response_id: str) -> Doc | None:
    """get_response, or None for a row that cannot be decoded (the store records and flags it)."""
    try:
        return store.get_response(response_id)
    except StoreError:
        return None


def model_sources(store: Store, rows: Iterable[tuple[Any, ...]]) -> dict[tuple[str, str], str]:
    """(evaluation id, model) → its source, from one stored response of each (the stats have no model_ref)."""
    at_eval, at_model = RESPONSE_STAT_FIELDS.index("evaluation_id"), RESPONSE_STAT_FIELDS.index("model_name")
    candidates: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        ids = candidates.setdefault((str(row[at_eval] or ""), str(row[at_model] or "")), [])
        if len(ids) < 3:  # a damaged first row: try the next ones
            ids.append(str(row[0]))
    sources = {}
    for key, ids in candidates.items():
        doc = next((d for d in map(partial(_readable, store), ids) if d is not None), None)
        sources[key] = model_source((doc or {}).get("model_ref"))
    return sources


def response_stats(store: Store, evaluation_id: str | None = None) -> pd.DataFrame:
    """Every stored response of one evaluation (None: all) as stats_frame rows, sources included."""
    rows = store.list_response_stats(evaluation_id)
    return stats_frame(rows, model_sources(store, rows))


def change_token(evaluations: Iterable[Doc]) -> tuple[tuple[str, str, int, int, str], ...]:
    """What changes when an evaluation gains responses or ends: a cache key for the frames read from it."""
    return tuple(
        (
            str(d.get("id")),
            str(d.get("status") or ""),
            int(d.get("completed_tasks") or 0),
            int(d.get("failed_tasks") or 0),
            str(d.get("finished_at") or ""),
        )
        for d in evaluations
    )


# --- one page of the table, with the texts of its rows -------------------------------------

PAGE_SIZE = 50


def page_count(n_rows: int, page_size: int = PAGE_SIZE) -> int:
    return max(1, math.ceil(n_rows / page_size))


def table_page(frame: pd.DataFrame, page: int, page_size: int = PAGE_SIZE) -> pd.DataFrame:
    """Rows of one page (1-based; clamped to the pages there are)."""
    page = min(max(1, int(page)), page_count(len(frame), page_size))
    return frame.iloc[(page - 1) * page_size : page * page_size]


def page_caption(n_rows: int, page: int, page_size: int = PAGE_SIZE) -> str:
    """'Responses 51–100 of 1,234 (page 2 of 25)'."""
    if not n_rows:
        return "No responses match the filters."
    page = min(max(1, int(page)), page_count(n_rows, page_size))
    first, last = (page - 1) * page_size + 1, min(page * page_size, n_rows)
    return f"Responses {first:,}–{last:,} of {n_rows:,} (page {page} of {page_count(n_rows, page_size)})"


def with_previews(rows: pd.DataFrame, docs: Mapping[str, Doc | None]) -> pd.DataFrame:
    """The rows with a 'preview' column: the start of each response (or its error) from docs by id."""
    previews = []
    for rid in rows["id"]:
        doc = docs.get(str(rid)) or {}
        previews.append(_preview(doc.get("error") or doc.get("response")))
    return rows.assign(preview=previews)


def text_docs(store: Store, response_ids: Iterable[str]) -> dict[str, Doc]:
    """id → {response, error} for a page of rows, one get_response each (the texts on screen only)."""
    out = {}
    for rid in response_ids:
        doc = _readable(store, str(rid))
        if doc is not None:
            out[str(rid)] = {"response": doc.get("response") or "", "error": doc.get("error") or ""}
    return out


@dataclass(frozen=True)
class ResponseFilters:
    """What the Results page narrows the table to; empty tuples mean 'all'."""

    evaluation_id: str | None = None
    models: tuple[str, ...] = ()
    sequences: tuple[str, ...] = ()
    prompts: tuple[int, ...] = ()
    runs: tuple[int, ...] = ()


@dataclass(frozen=True)
class FilterOptions:
    evaluations: list[str]
    models: list[str]
    sequences: list[str]
    prompts: list[int]
    runs: list[int]


def without_evaluations(frame: pd.DataFrame, evaluation_ids: Iterable[str]) -> pd.DataFrame:
    """The frame less the rows of the given evaluations (archived ones leave Results)."""
    hidden = set(evaluation_ids)
    return frame[~frame["evaluation_id"].isin(hidden)].reset_index(drop=True) if hidden else frame


def filter_options(frame: pd.DataFrame, evaluation_id: str | None = None) -> FilterOptions:
    """The values each filter can take (models etc. within the chosen evaluation)."""
    scoped = frame if not evaluation_id else frame[frame["evaluation_id"] == evaluation_id]
    return FilterOptions(
        evaluations=[str(e) for e in frame["evaluation_id"].unique()],  # in order of appearance
        models=sorted(str(m) for m in scoped["model"].unique()),
        sequences=sorted(str(s) for s in scoped["sequence"].unique()),
        prompts=sorted(int(p) for p in scoped["prompt"].unique()),
        runs=sorted(int(r) for r in scoped["run"].unique()),
    )


def apply_filters(frame: pd.DataFrame, filters: ResponseFilters) -> pd.DataFrame:
    """The rows that match every non-empty filter."""
    mask = pd.Series(True, index=frame.index)
    if filters.evaluation_id:
        mask &= frame["evaluation_id"] == filters.evaluation_id
    for column, wanted in (
        ("model", filters.models),
        ("sequence", filters.sequences),
        ("prompt", filters.prompts),
        ("run", filters.runs),
    ):
        if wanted:
            mask &= frame[column].isin(list(wanted))
    return frame[mask]


def sanitize_filters(filters: ResponseFilters, options: FilterOptions) -> ResponseFilters:
    """Drop values that no longer exist (e.g. from an old shared link)."""
    evaluation = filters.evaluation_id if filters.evaluation_id in options.evaluations else None
    return ResponseFilters(
        evaluation_id=evaluation,
        models=tuple(m for m in filters.models if m in options.models),
        sequences=tuple(s for s in filters.sequences if s in options.sequences),
        prompts=tuple(p for p in filters.prompts if p in options.prompts),
        runs=tuple(r for r in filters.runs if r in options.runs),
    )


# --- query parameters: ?evaluation=..&model=..&model=..&sequence=..&prompt=2&run=1 -------------


def _ints(values: Sequence[str]) -> tuple[int, ...]:
    return tuple(int(v) for v in values if v.strip().isdigit())


def filters_from_query(params: Mapping[str, Sequence[str]]) -> ResponseFilters:
    """Filters from URL query parameters (each key → all its values)."""
    evaluation = list(params.get("evaluation") or [])
    return ResponseFilters(
        evaluation_id=evaluation[-1] if evaluation else None,
        models=tuple(params.get("model") or ()),
        sequences=tuple(params.get("sequence") or ()),
        prompts=_ints(params.get("prompt") or ()),
        runs=_ints(params.get("run") or ()),
    )


def filters_to_query(filters: ResponseFilters) -> dict[str, list[str]]:
    """The query parameters that reproduce these filters (empty ones left out)."""
    params = {
        "evaluation": [filters.evaluation_id] if filters.evaluation_id else [],
        "model": list(filters.models),
        "sequence": list(filters.sequences),
        "prompt": [str(p) for p in filters.prompts],
        "run": [str(r) for r in filters.runs],
    }
    return {k: v for k, v in params.items() if v}


# --- per-model figures and the response detail ---------------------------------------


def chart_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Successful responses only: the rows the length/time/speed charts summarise."""
    return frame[frame["error"] == ""][["model", "source", "sequence", *[c for c, _ in CHART_METRICS]]]


def metric_figure(points: pd.DataFrame, column: str, title: str) -> go.Figure:
    """One box per model and source from quartiles (results.box_stats): a few numbers, not every point."""
    stats = box_stats(points, column, ["source", "model"])
    fig = go.Figure()
    for source, part in stats.groupby("source", sort=True, observed=True):
        fig.add_trace(
            go.Box(
                x=part["model"].astype(str).to_list(),
                q1=part["q1"].to_list(),
                median=part["median"].to_list(),
                q3=part["q3"].to_list(),
                lowerfence=part["lowerfence"].to_list(),
                upperfence=part["upperfence"].to_list(),
                mean=part["mean"].to_list(),
                name=str(source),
                customdata=part["n"].to_list(),
                hovertemplate="%{x}: median %{median:.3g} (n=%{customdata})<extra>%{fullData.name}</extra>",
            )
        )
    fig.update_layout(
        title=title, xaxis_title=None, yaxis_title=title, legend_title_text="source", boxmode="group"
    )
    return fig


def metric_figures(frame: pd.DataFrame) -> list[tuple[str, go.Figure]]:
    """(column, figure) for each of CHART_METRICS over the successful responses; empty when there are none."""
    points = chart_frame(frame)
    if points.empty:
        return []
    return [(column, metric_figure(points, column, title)) for column, title in CHART_METRICS]


def model_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model: responses, failures, mean words and tokens, mean time, overall tokens/s."""
    columns = [
        "model",
        "source",
        "responses",
        "failed",
        "mean_words",
        "mean_tokens",
        "mean_generation_time_s",
        "tokens_per_s",
    ]
    rows = []
    for (model, source), group in frame.groupby(["model", "source"], sort=True):
        ok = group[group["error"] == ""]
        seconds = float(ok["generation_time_s"].sum())
        rows.append(
            {
                "model": model,
                "source": source,
                "responses": len(ok),
                "failed": len(group) - len(ok),
                "mean_words": round(float(ok["words"].mean()), 1) if len(ok) else 0.0,
                "mean_tokens": round(float(ok["completion_tokens"].mean()), 1) if len(ok) else 0.0,
                "mean_generation_time_s": round(float(ok["generation_time_s"].mean()), 2) if len(ok) else 0.0,
                "tokens_per_s": round(float(ok["completion_tokens"].sum()) / seconds, 1) if seconds else 0.0,
            }
        )
    return pd.DataFrame(rows, columns=columns)


def response_label(row: Mapping[str, Any]) -> str:
    """'model · sequence · run 1 · prompt 2 (name)' for the response picker."""
    name = f" ({row['prompt_name']})" if row.get("prompt_name") else ""
    failed = " · failed" if row.get("error") else ""
    return f"{row['model']} · {row['sequence']} · run {row['run']} · prompt {row['prompt']}{name}{failed}"


@dataclass(frozen=True)
class ResponseDetail:
    """One response with everything needed to read it in context."""

    title: str
    prompt_text: str
    response_text: str
    error: str
    conversation: list[dict[str, str]]
    facts: dict[str, Any]

    @property
    def facts_line(self) -> str:
        """'words: 120 · completion tokens: 160 · …' without the empty ones."""
        return " · ".join(f"{k}: {v}" for k, v in self.facts.items() if v not in ("", None))


def response_detail(doc: Doc) -> ResponseDetail:
    """The prompt, the answer, the exact messages the model saw, and its numbers."""
    row = responses_frame([doc]).iloc[0].to_dict()
    facts = {
        "model": row["model"],
        "source": row["source"],
        "words": row["words"],
        "completion tokens": row["completion_tokens"],
        "prompt tokens": int(doc.get("prompt_tokens") or 0),
        "generation time (s)": round(row["generation_time_s"], 2),
        "tokens/s": round(row["tokens_per_s"], 1),
        "finish reason": row["finish_reason"],
        "seed": doc.get("seed"),
        "turns dropped to fit context": int(doc.get("dropped_turns") or 0),
        "chat template": doc.get("template") or "",
        "evaluation": row["evaluation_id"],
    }
    return ResponseDetail(
        title=response_label(row),
        prompt_text=doc.get("prompt_text") or "",
        response_text=doc.get("response") or "",
        error=doc.get("error") or "",
        conversation=[
            {"role": m.get("role", ""), "content": m.get("content", "")} for m in doc.get("messages") or []
        ],
        facts=facts,
    )


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """The filtered responses, full text included, as CSV."""
    return formula_safe_csv(frame.drop(columns=["preview"]))


def filtered_csv(store: Store, filters: ResponseFilters, hidden: Iterable[str] = ()) -> bytes:
    """csv_bytes of the responses matching filters, read from the store when the download is asked for."""
    docs = store.list_responses(filters.evaluation_id, include_messages=False)
    frame = without_evaluations(responses_frame(docs), hidden)
    return csv_bytes(apply_filters(frame, filters))
