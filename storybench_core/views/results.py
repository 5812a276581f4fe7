"""What the Results page shows: the response table, its filters, per-model figures for the charts.

Scores, leaderboards and compare views come from results.py (the judge's
side); this module only covers the generated responses themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..results.export import csv_bytes as formula_safe_csv
from ..store.base import Doc

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
        evaluations=list(dict.fromkeys(frame["evaluation_id"])),
        models=sorted(set(scoped["model"])),
        sequences=sorted(set(scoped["sequence"])),
        prompts=sorted(int(p) for p in set(scoped["prompt"])),
        runs=sorted(int(r) for r in set(scoped["run"])),
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
    """Successful responses only: the rows the length/time/speed charts plot."""
    return frame[frame["error"] == ""][["model", "source", "sequence", *[c for c, _ in CHART_METRICS]]]


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
