"""Side-by-side texts of the same brief with their scores and justifications."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..store.base import Store
from .frames import judgements_frame, word_count

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
