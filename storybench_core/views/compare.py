"""The Compare tab: one brief's responses side by side with their scores and justifications.

The choice (sequence, prompt, run, models) round-trips through the URL; compare_columns shapes a
scored frame into one column per model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from .. import results
from .results import FilterOptions
from .scores import criterion_labels, is_nan


@dataclass(frozen=True)
class CompareChoice:
    """What the Compare tab shows: one sequence, prompt (1-based) and run, two or more models."""

    sequence: str | None = None
    prompt: int | None = None
    run: int | None = None
    models: tuple[str, ...] = ()


def sanitize_compare(choice: CompareChoice, options: FilterOptions) -> CompareChoice:
    """Keep what still exists; otherwise the first sequence, prompt and run and up to three models."""
    models = tuple(m for m in choice.models if m in options.models)
    if not choice.models:
        models = tuple(options.models[:3])
    return CompareChoice(
        sequence=choice.sequence
        if choice.sequence in options.sequences
        else next(iter(options.sequences), None),
        prompt=choice.prompt if choice.prompt in options.prompts else next(iter(options.prompts), None),
        run=choice.run if choice.run in options.runs else next(iter(options.runs), None),
        models=models,
    )


def _int_or_none(values: Sequence[str]) -> int | None:
    last = values[-1].strip() if values else ""
    return int(last) if last.isdigit() else None


def compare_from_query(params: Mapping[str, Sequence[str]]) -> CompareChoice:
    """?cmp_sequence=film&cmp_prompt=2&cmp_run=1&cmp_model=a&cmp_model=b."""
    sequence = list(params.get("cmp_sequence") or [])
    return CompareChoice(
        sequence=sequence[-1] if sequence else None,
        prompt=_int_or_none(list(params.get("cmp_prompt") or [])),
        run=_int_or_none(list(params.get("cmp_run") or [])),
        models=tuple(params.get("cmp_model") or ()),
    )


def compare_to_query(choice: CompareChoice) -> dict[str, list[str]]:
    params = {
        "cmp_sequence": [choice.sequence] if choice.sequence else [],
        "cmp_prompt": [str(choice.prompt)] if choice.prompt is not None else [],
        "cmp_run": [str(choice.run)] if choice.run is not None else [],
        "cmp_model": list(choice.models),
    }
    return {k: v for k, v in params.items() if v}


@dataclass(frozen=True)
class CriterionScore:
    criterion: str
    label: str
    score: float | None
    why: str


@dataclass(frozen=True)
class JudgementCard:
    """One judge's judgement of one response."""

    judge: str
    attempt: int
    overall: float | None
    error: str
    scores: tuple[CriterionScore, ...] = ()

    @property
    def title(self) -> str:
        head = f"{self.judge} · attempt {self.attempt}"
        return f"{head} · failed" if self.error else f"{head} · overall {self.overall:.2f}"


@dataclass(frozen=True)
class CompareColumn:
    """One model's response with its judgements, as a column of the Compare tab."""

    model: str
    response: str
    error: str
    words: int
    overall: float | None
    judgements: tuple[JudgementCard, ...] = field(default_factory=tuple)

    @property
    def score_line(self) -> str:
        """Per-criterion means over the valid judgements: 'Creativity 4 · Coherence 3.5 · …'."""
        valid = [j for j in self.judgements if not j.error]
        if not valid:
            return ""
        parts = []
        for i, item in enumerate(valid[0].scores):
            values = [s for j in valid if len(j.scores) > i and (s := j.scores[i].score) is not None]
            if values:
                mean = sum(values) / len(values)
                parts.append(
                    f"{item.label} **{mean:g}**" if mean.is_integer() else f"{item.label} **{mean:.2f}**"
                )
        return " · ".join(parts)

    @property
    def status(self) -> str:
        """'not judged yet', 'every judgement failed' or '' when there is a score."""
        if self.overall is not None:
            return ""
        return "every judgement failed" if self.judgements else "not judged yet"


def compare_columns(frame: pd.DataFrame, judge: str | None = None) -> tuple[str, list[CompareColumn]]:
    """The prompt text and one column per model from results.compare_frame (optionally one judge's cards)."""
    if frame.empty:
        return "", []
    criteria = results.criteria_of(frame)
    labels = criterion_labels(criteria)
    prompt = str(frame["prompt_text"].dropna().iloc[0]) if frame["prompt_text"].notna().any() else ""
    columns = []
    for model, rows in frame.groupby("model_name", sort=False):
        judged = rows[rows["judge_model"].notna()]
        if judge is not None:
            judged = judged[judged["judge_model"] == judge]
        cards = []
        for row in judged.sort_values(["judge_model", "attempt"]).to_dict("records"):
            scores = tuple(
                CriterionScore(
                    c,
                    labels[c],
                    None
                    if is_nan(row.get(results.SCORE_PREFIX + c))
                    else float(row[results.SCORE_PREFIX + c]),
                    str(row.get(results.WHY_PREFIX + c) or ""),
                )
                for c in criteria
            )
            error = "" if is_nan(row.get("judgement_error")) else str(row.get("judgement_error") or "")
            overall = None if is_nan(row.get("overall")) else float(row["overall"])
            cards.append(JudgementCard(str(row["judge_model"]), int(row["attempt"]), overall, error, scores))
        valid = [c.overall for c in cards if c.overall is not None and not c.error]
        first = rows.iloc[0]
        columns.append(
            CompareColumn(
                model=str(model),
                response=str(first["response"] or ""),
                error="" if is_nan(first["response_error"]) else str(first["response_error"] or ""),
                words=int(first["words"]),
                overall=sum(valid) / len(valid) if valid else None,
                judgements=tuple(cards),
            )
        )
    return prompt, columns


def selections_to_query(judge: str | None, compare: CompareChoice | None) -> dict[str, list[str]]:
    """The score-side selections worth sharing as query parameters."""
    params = {"judge": [judge]} if judge else {}
    return params | (compare_to_query(compare) if compare is not None else {})
