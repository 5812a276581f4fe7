"""Exports: CSV, JSON and a Markdown report."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..store.base import Doc, Store
from ..text_safety import csv_safe_frame
from .frames import per_response, responses_frame
from .tables import criterion_matrix, judge_agreement, leaderboard, per_sequence

# --- exports ---------------------------------------------------------------------------------


def csv_bytes(df: pd.DataFrame) -> bytes:
    """A frame as UTF-8 CSV, no index; no text cell starts with = + - @ (text_safety.csv_safe)."""
    return csv_safe_frame(df).to_csv(index=False).encode("utf-8")


def export_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a results frame as CSV (UTF-8, no index, formula-safe cells)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(csv_bytes(df))
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
    from ..jobqueue import get_evaluation

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
    from ..jobqueue import get_evaluation

    evaluation = get_evaluation(store, evaluation_id)
    df = responses_frame(store, evaluation_id)  # no texts: only the few excerpts below are read
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
        lines += ["", "## Best and worst responses", ""]
        picks = [("Best", scored.head(n_samples)), ("Worst", scored.tail(n_samples).iloc[::-1])]
        for label, rows in picks:
            for rid, row in rows.iterrows():
                doc = store.get_response(str(rid)) or {}
                lines += [
                    f"### {label}: {row['model_name']} · {row['sequence']} · run {int(row['run'])} · "
                    f"prompt {int(row['prompt_index']) + 1} — overall {row['overall']:.2f}",
                    "",
                    "> " + _excerpt(str(doc.get("response") or "")),
                    "",
                ]
    return "\n".join(lines).rstrip() + "\n"
