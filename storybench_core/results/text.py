"""Text metrics: distinct n-grams, repetition, stock phrases."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd

from .. import catalog
from ..store.base import Store

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


# --- text metrics of a bounded sample -------------------------------------------------------

TEXT_SAMPLE_PER_MODEL = 200
_METRIC_COLUMNS = ["words", "distinct_2", "distinct_3", "repeated_4gram_rate", "stock_phrase_count"]


@dataclass(frozen=True)
class TextSample:
    """The conversations whose texts the text metrics read: (model, sequence, run) each."""

    conversations: tuple[tuple[str, str, int], ...]
    n_sampled: int  # responses of the frame inside those conversations
    n_total: int  # responses in the frame

    @property
    def complete(self) -> bool:
        return self.n_sampled >= self.n_total


def text_sample(df: pd.DataFrame, per_model: int = TEXT_SAMPLE_PER_MODEL) -> TextSample:
    """Per model, whole conversations run by run (run 1 first) until per_model responses are in.

    Runs are independent repeats of the same briefs, so the first runs stand
    for all of them; the texts to read stay bounded however many runs there are.
    Input: a results frame (response_id, model_name, sequence, run).
    """
    per = df.drop_duplicates("response_id")[["model_name", "sequence", "run"]].dropna()
    if per.empty:
        return TextSample((), 0, 0)
    per = per.astype({"model_name": str, "sequence": str, "run": int})
    counts = per.groupby(["model_name", "run", "sequence"], sort=True).size()
    before = counts.groupby(level="model_name").cumsum() - counts
    chosen = counts[before < per_model]
    conversations = tuple((str(m), str(s), int(r)) for m, r, s in chosen.index)
    return TextSample(conversations, int(chosen.sum()), len(per))


def sample_text_metrics(
    store: Store, evaluation_id: str, conversations: Iterable[tuple[str, str, int]]
) -> pd.DataFrame:
    """Text metrics of the successful responses of these conversations, read one conversation at a time.

    Columns as text_metrics_frame: response_id, model_name, sequence, words,
    distinct_2, distinct_3, repeated_4gram_rate, stock_phrase_count.
    """
    phrases = tuple(catalog.load_stock_phrases())
    rows = []
    for model, sequence, run in conversations:
        docs = store.list_responses(
            evaluation_id, model_name=model, sequence=sequence, run=run, include_messages=False
        )
        rows += [
            {"response_id": d["id"], "model_name": model, "sequence": sequence}
            | text_metrics(d.get("response") or "", phrases)
            for d in docs
            if not d.get("error")
        ]
    return pd.DataFrame(rows, columns=["response_id", "model_name", "sequence", *_METRIC_COLUMNS])
