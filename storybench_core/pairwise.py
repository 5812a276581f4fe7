"""Blind pairwise judging: two models' answers to the same brief, shown as A and B, in both orders.

A *pair* is two models' responses to the same (sequence, run, prompt index),
within one evaluation or across several (then keyed by sequence, run, prompt
index and prompt text). The judge sees the brief, the earlier briefs, and the
two texts clipped to one shared character budget (recorded), and answers per
criterion group with a 7-point label, A+++ … A+, tie, B+ … B+++, constrained
by a JSON schema where the backend supports it and validated either way. An
invalid answer is retried with the reason fed back, then stored as a failed
verdict: no label is ever invented.

Each pair is judged in both orders (model 1 shown first, then model 2 shown
first); each order is its own verdict document, verdict_key = pair_key |
judge | order | attempt. `combine_orders` averages the two margins from model
1's point of view, so a judge that always prefers the first text ends up at a
tie. `compare_judge_evaluation` spends a call budget adaptively: a sparse
start (each model against a few others), then more pairs where the models'
rating intervals still overlap, until they separate or the budget is spent.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np
import pandas as pd

from .backends.base import Completion, GenerationSettings, Message, ModelBackend
from .config import GenerationSettingsConfig, JudgeConfig, ModelSpec
from .errors import JudgeError, StorybenchError
from .judge import extract_json_object, judge_width
from .ratings import fit_ratings, intervals_overlap
from .runner import ModelPool
from .store.base import Doc, Store

log = logging.getLogger(__name__)

EventFn = Callable[..., None]

LABELS = ("A+++", "A++", "A+", "tie", "B+", "B++", "B+++")
MARGIN = {"A+++": 3, "A++": 2, "A+": 1, "tie": 0, "B+": -1, "B++": -2, "B+++": -3}
ORDERS = ("12", "21")  # "12": model 1 shown as A; "21": model 2 shown as A
HUMAN = "human"

DEFAULT_BUDGET_CHARS = 3000
DEFAULT_MAX_TOKENS = 160
DEFAULT_CALL_BUDGET = 40
MIN_COMPARISONS = 4  # per model, before its interval is trusted to stop judging
MAX_FAILURES_IN_A_ROW = 6  # then the judge is broken (context, schema, endpoint): stop spending calls
REASON_MAX_CHARS = 160
RAW_KEEP_CHARS = 8000


@dataclass(frozen=True)
class CriterionGroup:
    """A group of rubric criteria the judge decides on as one."""

    id: str
    description: str


DEFAULT_GROUPS = (
    CriterionGroup("story", "the idea and what it means: originality, surprise, depth of concept and theme"),
    CriterionGroup("craft", "the writing: coherence, dialogue, characters who feel alive and consistent"),
    CriterionGroup("imagery", "visual imagination: concrete, specific, vivid pictures a reader can see"),
)


def now_utc() -> datetime:
    return datetime.now(UTC)


# --- pairs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """Two models' responses to the same brief; model_1 < model_2 by name (the canonical order)."""

    pair_key: str
    scope: str
    sequence: str
    run: int
    prompt_index: int
    model_1: str
    model_2: str
    response_1: str
    response_2: str

    def shown(self, order: str) -> tuple[str, str, str, str]:
        """(model_a, model_b, response_a, response_b) as shown in this order."""
        if order == "12":
            return self.model_1, self.model_2, self.response_1, self.response_2
        return self.model_2, self.model_1, self.response_2, self.response_1

    @property
    def models(self) -> tuple[str, str]:
        return self.model_1, self.model_2


def scope_id(evaluation_ids: str | Iterable[str]) -> str:
    """Where verdicts and votes of a comparison are filed: the evaluation id, or the ids joined by '+'."""
    ids = [evaluation_ids] if isinstance(evaluation_ids, str) else sorted(set(evaluation_ids))
    return "+".join(ids)


def make_pair_key(response_1: str, response_2: str) -> str:
    """Opaque and order-free: the same two responses always give the same key."""
    first, second = sorted((response_1, response_2))
    return hashlib.sha256(f"{first}|{second}".encode()).hexdigest()[:24]


def contestant_names(responses: Iterable[Doc]) -> dict[tuple[str, str], str]:
    """(evaluation_id, model_name) → the name used in ratings; qualified by evaluation only when needed."""
    seen: dict[str, set[str]] = {}
    for r in responses:
        seen.setdefault(r["model_name"], set()).add(r["evaluation_id"])
    names = {}
    for model, evals in seen.items():
        for eid in evals:
            names[(eid, model)] = model if len(evals) == 1 else f"{model} [{eid}]"
    return names


def build_pairs(responses: Iterable[Doc], scope: str) -> list[Pair]:
    """Every pair of models answering the same (sequence, run, prompt index, prompt text); failures left out."""
    docs = [r for r in responses if not r.get("error")]
    names = contestant_names(docs)
    slots: dict[tuple[str, int, int, str], dict[str, Doc]] = {}
    for r in docs:
        slot = (r["sequence"], int(r["run"]), int(r["prompt_index"]), str(r.get("prompt_text") or ""))
        slots.setdefault(slot, {})[names[(r["evaluation_id"], r["model_name"])]] = r
    pairs = []
    for (sequence, run, prompt_index, _text), by_model in sorted(slots.items()):
        models = sorted(by_model)
        for i, m1 in enumerate(models):
            for m2 in models[i + 1 :]:
                r1, r2 = by_model[m1]["id"], by_model[m2]["id"]
                pairs.append(Pair(make_pair_key(r1, r2), scope, sequence, run, prompt_index, m1, m2, r1, r2))
    return pairs


def load_responses(store: Store, evaluation_ids: str | Iterable[str]) -> dict[str, Doc]:
    """Successful responses (with their messages) of one or more evaluations, by id."""
    ids = [evaluation_ids] if isinstance(evaluation_ids, str) else list(evaluation_ids)
    return {r["id"]: r for eid in ids for r in store.list_responses(eid) if not r.get("error")}


def pairs_for(store: Store, evaluation_ids: str | Iterable[str]) -> list[Pair]:
    """All candidate pairs of one evaluation (or across several)."""
    return build_pairs(load_responses(store, evaluation_ids).values(), scope_id(evaluation_ids))


# --- prompt ----------------------------------------------------------------------------------


def clip_text(text: str, limit: int) -> str:
    """At most `limit` characters: the opening and the ending kept, the middle marked as cut."""
    if len(text) <= limit:
        return text
    marker = " […] "
    if limit <= len(marker) + 20:
        return text[:limit]
    head = (limit - len(marker)) * 2 // 3
    tail = limit - len(marker) - head
    return text[:head].rstrip() + marker + text[-tail:].lstrip()


def earlier_briefs(response_doc: Doc) -> list[str]:
    """The user prompts sent before this response's own brief (shared by every model's conversation)."""
    users = [m.get("content", "") for m in response_doc.get("messages") or [] if m.get("role") == "user"]
    return users[:-1]


def verdict_schema(groups: Sequence[CriterionGroup]) -> dict[str, Any]:
    """JSON schema of an answer: one label per group (an enum) and a short reason."""
    props: dict[str, Any] = {g.id: {"type": "string", "enum": list(LABELS)} for g in groups}
    props["reason"] = {"type": "string", "minLength": 1, "maxLength": REASON_MAX_CHARS}
    return {
        "type": "object",
        "properties": props,
        "required": [*(g.id for g in groups), "reason"],
        "additionalProperties": False,
    }


SYSTEM_PROMPT = (
    "You compare two pieces of fiction written for the same brief. You weigh only the writing shown, "
    "never its length or which text comes first, and you reply with JSON only."
)


def pair_messages(
    brief: str,
    briefs_before: Sequence[str],
    text_a: str,
    text_b: str,
    groups: Sequence[CriterionGroup],
    budget_chars: int,
) -> list[Message]:
    """The judge conversation for one order of one pair; both texts clipped to budget_chars."""
    before = "\n".join(f"[turn {i + 1}] {clip_text(b, 600)}" for i, b in enumerate(briefs_before))
    group_lines = "\n".join(f'- "{g.id}": {g.description}' for g in groups)
    shape = ", ".join(f'"{g.id}": "<label>"' for g in groups)
    user = "\n".join(
        [
            "Two writers answered the same brief. For each group of criteria below, say which text is better.",
            "",
            "=== EARLIER BRIEFS (context only; each writer also saw its own earlier answers) ===",
            before or "None: this is the first brief.",
            "",
            "=== THE BRIEF ===",
            brief,
            "",
            "=== TEXT A ===",
            clip_text(text_a, budget_chars),
            "=== END OF TEXT A ===",
            "",
            "=== TEXT B ===",
            clip_text(text_b, budget_chars),
            "=== END OF TEXT B ===",
            "",
            "Groups of criteria:",
            group_lines,
            "",
            'Labels: "A+++" A is far better, "A++" A is clearly better, "A+" A is slightly better, "tie" no real '
            'difference, "B+" B is slightly better, "B++" B is clearly better, "B+++" B is far better.',
            f"Texts longer than {budget_chars} characters were cut in the middle (marked […]); a longer text "
            "is not a better one, and the order of the texts means nothing.",
            f'Reply with one JSON object: {{{shape}, "reason": "<one short sentence>"}}',
        ]
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# --- parsing ---------------------------------------------------------------------------------


_LABEL_RE = re.compile(r"^(?:([AB])\s*(\+{1,3})|(tie))$", re.IGNORECASE)


def normalize_label(value: Any) -> str | None:
    """'a++' → 'A++', 'TIE' → 'tie'; None when it is not one of the seven labels."""
    if not isinstance(value, str):
        return None
    m = _LABEL_RE.match(value.strip())
    if not m:
        return None
    return "tie" if m.group(3) else m.group(1).upper() + m.group(2)


def parse_verdict(text: str, groups: Sequence[CriterionGroup]) -> tuple[dict[str, str], str]:
    """(label per group, reason) from a judge answer; JudgeError saying what is wrong."""
    data = extract_json_object(text)  # the rubric judge's extractor: whole text, prose or code fences
    labels: dict[str, str] = {}
    problems = []
    for g in groups:
        label = normalize_label(data.get(g.id))
        if label is None:
            got = data.get(g.id)
            problems.append(
                f"'{g.id}' = {got!r} is not one of {', '.join(LABELS)}" if got else f"'{g.id}' is missing"
            )
        else:
            labels[g.id] = label
    if problems:
        raise JudgeError("; ".join(problems))
    reason = data.get("reason")
    return labels, str(reason).strip()[:REASON_MAX_CHARS] if isinstance(reason, str) else ""


# --- judging one order -----------------------------------------------------------------------


def verdict_key(pair_key: str, judge: str, order: str, attempt: int = 1) -> str:
    return f"{pair_key}|{judge}|{order}|{attempt}"


def _seed(pair_key: str, order: str, attempt: int, retry: int) -> int:
    digest = hashlib.sha256(f"{pair_key}|{order}|{attempt}|{retry}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 1)


def _fit_budget(
    backend: ModelBackend, make: Callable[[int], list[Message]], budget_chars: int, max_tokens: int
) -> tuple[list[Message], int]:
    """Messages that fit the judge's context, shrinking the shared text budget as needed."""
    room = backend.context_size() - max_tokens
    budget = budget_chars
    while True:
        messages = make(budget)
        needed = backend.count_tokens(messages)
        if needed <= room:
            return messages, budget
        if budget <= 200:
            raise JudgeError(
                f"the pairwise prompt needs {needed} tokens but the judge's context leaves {room} "
                f"(n_ctx {backend.context_size()} minus max_tokens {max_tokens}); raise generation.n_ctx"
            )
        budget = max(200, budget * 3 // 4)


class _VerdictTask:
    """One order of one pair being judged: its verdict document, next messages and retries."""

    def __init__(
        self,
        backend: ModelBackend,
        judge_name: str,
        pair: Pair,
        order: str,
        responses: dict[str, Doc],
        groups: Sequence[CriterionGroup],
        budget_chars: int,
        max_tokens: int,
        temperature: float,
        max_retries: int,
        attempt: int,
    ) -> None:
        model_a, model_b, rid_a, rid_b = pair.shown(order)
        doc_a, doc_b = responses[rid_a], responses[rid_b]
        text_a, text_b = str(doc_a.get("response") or ""), str(doc_b.get("response") or "")
        constrained = bool(getattr(backend, "supports_json_schema", False))
        self.pair, self.order, self.attempt = pair, order, attempt
        self.groups, self.max_tokens, self.temperature, self.max_retries = (
            groups,
            max_tokens,
            temperature,
            max_retries,
        )
        self.verdict: Doc = {
            "id": uuid4().hex,
            "evaluation_id": pair.scope,
            "verdict_key": verdict_key(pair.pair_key, judge_name, order, attempt),
            "pair_key": pair.pair_key,
            "judge": judge_name,
            "order": order,
            "attempt": attempt,
            "model_1": pair.model_1,
            "model_2": pair.model_2,
            "model_a": model_a,
            "model_b": model_b,
            "response_a": rid_a,
            "response_b": rid_b,
            "sequence": pair.sequence,
            "run": pair.run,
            "prompt_index": pair.prompt_index,
            "groups": None,
            "reason": None,
            "raw_output": None,
            "error": None,
            "retries": 0,
            "calls": 0,
            "budget_chars": budget_chars,
            "chars_a": len(text_a),
            "chars_b": len(text_b),
            "structured_output": "json_schema" if constrained else "prompt-only",
            "temperature": temperature,
        }
        self.schema = verdict_schema(groups) if constrained else None
        self.error = ""
        self.tries = 0
        self.started = time.perf_counter()
        self.finished = False
        self.messages: list[Message] = []
        brief = str(doc_a.get("prompt_text") or "")

        def make(budget: int) -> list[Message]:
            return pair_messages(brief, earlier_briefs(doc_a), text_a, text_b, groups, budget)

        try:
            self.messages, used = _fit_budget(backend, make, budget_chars, max_tokens)
        except JudgeError as exc:
            self.verdict.update(error=str(exc), created_at=now_utc())
            self.finished = True
            return
        self.verdict["budget_chars"] = used
        self.verdict["clipped"] = max(len(text_a), len(text_b)) > used

    @property
    def pending(self) -> bool:
        return not self.finished

    def settings(self) -> GenerationSettings:
        """The next try's settings; counts the call."""
        self.verdict["retries"] = self.tries
        self.verdict["calls"] += 1
        return GenerationSettings(
            temperature=self.temperature,
            top_p=1.0,
            max_tokens=self.max_tokens,
            seed=_seed(self.pair.pair_key, self.order, self.attempt, self.tries),
            json_schema=self.schema,
        )

    def call_failed(self, exc: StorybenchError | str) -> None:
        self.error = f"judge model failed: {exc}"
        self._next_try()

    def take(self, completion: Completion) -> None:
        """Validate one answer: keep its labels, or feed the reason back for the next try."""
        if completion.finish_reason == "error":
            self.call_failed(str(completion.extra.get("error") or "no answer"))
            return
        self.verdict["raw_output"] = completion.text[:RAW_KEEP_CHARS]
        self.verdict["finish_reason"] = completion.finish_reason
        try:
            labels, reason = parse_verdict(completion.text, self.groups)
        except JudgeError as exc:
            error = str(exc)
            if completion.finish_reason == "length":
                error += f" (the answer hit max_tokens = {self.max_tokens})"
            self.error = error
            self.messages = [
                *self.messages[:2],
                {"role": "assistant", "content": completion.text[:1500]},
                {
                    "role": "user",
                    "content": f"That answer could not be used: {error}. Reply again with only the JSON object, "
                    "one label per group.",
                },
            ]
            self._next_try()
            return
        self.verdict.update(groups=labels, reason=reason, error=None)
        self._close()

    def _next_try(self) -> None:
        self.tries += 1
        if self.tries > self.max_retries:
            self.verdict["error"] = f"no valid verdict after {self.max_retries + 1} tries: {self.error}"
            self._close()

    def _close(self) -> None:
        self.finished = True
        self.verdict["generation_time_s"] = round(time.perf_counter() - self.started, 4)
        self.verdict["created_at"] = now_utc()


def judge_pair(
    backend: ModelBackend,
    judge_name: str,
    pair: Pair,
    order: str,
    responses: dict[str, Doc],
    *,
    groups: Sequence[CriterionGroup] = DEFAULT_GROUPS,
    budget_chars: int = DEFAULT_BUDGET_CHARS,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    temperature: float = 0.0,
    max_retries: int = 2,
    attempt: int = 1,
) -> Doc:
    """Judge one order of one pair (with retries); returns the verdict document, valid or failed."""
    task = _VerdictTask(
        backend,
        judge_name,
        pair,
        order,
        responses,
        groups,
        budget_chars,
        max_tokens,
        temperature,
        max_retries,
        attempt,
    )
    while task.pending:
        settings = task.settings()
        try:
            completion = backend.chat(task.messages, settings)
        except StorybenchError as exc:
            task.call_failed(exc)
            continue
        task.take(completion)
    return task.verdict


def judge_pair_orders(
    backend: ModelBackend,
    judge_name: str,
    pair: Pair,
    orders: Sequence[str],
    responses: dict[str, Doc],
    *,
    groups: Sequence[CriterionGroup] = DEFAULT_GROUPS,
    budget_chars: int = DEFAULT_BUDGET_CHARS,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    temperature: float = 0.0,
    max_retries: int = 2,
    attempt: int = 1,
) -> list[Doc]:
    """Judge several orders of one pair together through `chat_batch`; one verdict per order.

    The same tries, seeds, validation and failure records as `judge_pair`; each
    round sends every order still pending in one call.
    """
    tasks = [
        _VerdictTask(
            backend,
            judge_name,
            pair,
            order,
            responses,
            groups,
            budget_chars,
            max_tokens,
            temperature,
            max_retries,
            attempt,
        )
        for order in orders
    ]
    while pending := [t for t in tasks if t.pending]:
        settings = [t.settings() for t in pending]
        try:
            completions = backend.chat_batch([t.messages for t in pending], settings)  # type: ignore[attr-defined]
        except StorybenchError as exc:
            for task in pending:
                task.call_failed(exc)
            continue
        for n, task in enumerate(pending):
            if n < len(completions):
                task.take(completions[n])
            else:
                task.call_failed("the backend returned no answer for this order")
    return [t.verdict for t in tasks]


# --- combining orders, outcomes, position bias -----------------------------------------------


def verdict_margin(verdict: Doc, group: str | None = None) -> float:
    """A valid verdict's margin for the text shown first (A): +3 … −3; one group or the mean of all."""
    labels = verdict.get("groups") or {}
    if group is not None:
        return float(MARGIN[labels[group]])
    return float(np.mean([MARGIN[v] for v in labels.values()]))


def _latest_valid(verdicts: Iterable[Doc]) -> dict[tuple[str, str, str], Doc]:
    """(judge, pair_key, order) → the valid verdict with the highest attempt."""
    chosen: dict[tuple[str, str, str], Doc] = {}
    for v in verdicts:
        if v.get("error") or not v.get("groups"):
            continue
        key = (v["judge"], v["pair_key"], v["order"])
        if key not in chosen or int(v.get("attempt") or 1) > int(chosen[key].get("attempt") or 1):
            chosen[key] = v
    return chosen


def combine_orders(verdicts: Iterable[Doc], group: str | None = None) -> pd.DataFrame:
    """One row per (judge, pair) judged validly in both orders: margins from model 1's side, and their mean.

    Columns: judge, pair_key, model_1, model_2, sequence, run, prompt_index,
    margin_12, margin_21, margin (their mean, −3…+3), consistent (both orders
    prefer the same model, or both tie).
    """
    columns = ["judge", "pair_key", "model_1", "model_2", "sequence", "run", "prompt_index",
               "margin_12", "margin_21", "margin", "consistent"]  # fmt: skip
    chosen = _latest_valid(verdicts)
    rows = []
    for (judge, pair_key, order), first in chosen.items():
        if order != "12" or (judge, pair_key, "21") not in chosen:
            continue
        second = chosen[(judge, pair_key, "21")]
        m12 = verdict_margin(first, group)
        m21 = -verdict_margin(second, group)  # model 1 was shown as B
        rows.append(
            {
                "judge": judge,
                "pair_key": pair_key,
                "model_1": first["model_1"],
                "model_2": first["model_2"],
                "sequence": first.get("sequence"),
                "run": first.get("run"),
                "prompt_index": first.get("prompt_index"),
                "margin_12": m12,
                "margin_21": m21,
                "margin": (m12 + m21) / 2,
                "consistent": bool(np.sign(m12) == np.sign(m21)),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def _score(margin: float, margin_weighted: bool) -> float:
    if margin_weighted:
        return 0.5 + margin / 6.0
    return 1.0 if margin > 0 else 0.0 if margin < 0 else 0.5


def verdict_outcomes(
    verdicts: Iterable[Doc], group: str | None = None, *, margin_weighted: bool = False
) -> pd.DataFrame:
    """Rating outcomes from judge verdicts: one per (judge, pair) with both orders valid.

    score_a is model_1's share: 1 / 0.5 / 0 by the sign of the combined margin,
    or 0.5 + margin/6 when margin_weighted. Columns: judge, pair_key, model_a,
    model_b, score_a, weight, margin.
    """
    combined = combine_orders(verdicts, group)
    return pd.DataFrame(
        {
            "judge": combined["judge"],
            "pair_key": combined["pair_key"],
            "model_a": combined["model_1"],
            "model_b": combined["model_2"],
            "score_a": [_score(m, margin_weighted) for m in combined["margin"]],
            "weight": 1.0,
            "margin": combined["margin"],
        }
    )


def vote_outcomes(votes: Iterable[Doc], judge: str = HUMAN) -> pd.DataFrame:
    """Rating outcomes from human votes (each vote one outcome), in the same model_1/model_2 orientation."""
    rows = []
    for v in votes:
        choice = v.get("choice")
        if choice not in ("A", "B", "tie") or not v.get("model_1"):
            continue
        shown_first = v.get("model_a")
        a_share = {"A": 1.0, "B": 0.0, "tie": 0.5}[choice]
        score = a_share if shown_first == v["model_1"] else 1.0 - a_share
        rows.append(
            {
                "judge": judge,
                "pair_key": v["pair_key"],
                "model_a": v["model_1"],
                "model_b": v["model_2"],
                "score_a": score,
                "weight": 1.0,
                "margin": (score - 0.5) * 2,
            }
        )
    return pd.DataFrame(
        rows, columns=["judge", "pair_key", "model_a", "model_b", "score_a", "weight", "margin"]
    )


def position_bias(verdicts: Iterable[Doc]) -> pd.DataFrame:
    """Per judge: how often the text shown first wins, and how often swapping the order changes the verdict.

    first_win_rate = first wins / (first wins + second wins), ties left out
    (0.5 means no position bias). consistent_rate: share of pairs judged in both
    orders whose two verdicts prefer the same model (or both tie).
    """
    docs = list(verdicts)
    columns = ["judge", "verdicts", "failed", "first_wins", "second_wins", "ties", "first_win_rate",
               "pairs_both_orders", "consistent_rate"]  # fmt: skip
    combined = combine_orders(docs)
    rows = []
    for judge in sorted({d["judge"] for d in docs}):
        own = [d for d in docs if d["judge"] == judge]
        valid = [d for d in own if not d.get("error") and d.get("groups")]
        margins = [verdict_margin(d) for d in valid]
        first = sum(m > 0 for m in margins)
        second = sum(m < 0 for m in margins)
        pairs = combined[combined["judge"] == judge]
        rows.append(
            {
                "judge": judge,
                "verdicts": len(own),
                "failed": len(own) - len(valid),
                "first_wins": first,
                "second_wins": second,
                "ties": len(margins) - first - second,
                "first_win_rate": first / (first + second) if first + second else float("nan"),
                "pairs_both_orders": len(pairs),
                "consistent_rate": float(pairs["consistent"].mean()) if len(pairs) else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def all_outcomes(store: Store, scope: str, *, margin_weighted: bool = False) -> pd.DataFrame:
    """Every judge's verdict outcomes plus the human votes (judge 'human') filed under a scope."""
    judged = verdict_outcomes(store.list_verdicts(scope), margin_weighted=margin_weighted)
    voted = vote_outcomes(store.list_votes(scope))
    frames = [f for f in (judged, voted) if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else judged


# --- the same-family check -------------------------------------------------------------------

_FAMILIES = ("gemma", "llama", "qwen", "mistral", "mixtral", "phi", "gpt", "claude", "deepseek", "command",
             "falcon", "olmo", "granite", "smollm", "internlm", "glm", "nemotron", "grok", "yi")  # fmt: skip
_FAMILY_ALIASES = {"mixtral": "mistral", "codellama": "llama", "codegemma": "gemma"}


def _local_gguf(spec: ModelSpec) -> Path | None:
    """The spec's GGUF file when it is already on disk (never downloads)."""
    try:
        if spec.kind == "bundled":
            from .bundled import bundled_model_path

            path = bundled_model_path()
        elif spec.kind == "path":
            path = Path(spec.path or "").expanduser()
        elif spec.kind == "hf" and spec.repo_id and spec.filename:
            from .hub import ModelRef, local_path_for

            path = local_path_for(ModelRef(spec.repo_id, spec.filename, subdirectory=spec.subdirectory))
        else:
            return None
    except (StorybenchError, OSError, TypeError):
        return None
    return path if path.is_file() else None


def _family_from_text(text: str) -> str | None:
    low = text.lower()
    for fam in sorted(_FAMILIES, key=len, reverse=True):
        if re.search(rf"(?<![a-z]){fam}", low):
            return _FAMILY_ALIASES.get(fam, fam)
    return None


def model_family(spec: ModelSpec) -> tuple[str | None, str]:
    """(family, how it was found): from the GGUF's architecture metadata when local, else from names."""
    path = _local_gguf(spec)
    if path is not None:
        try:
            from .gguf_info import read_gguf_info

            arch = read_gguf_info(path).architecture.lower()
        except StorybenchError:
            arch = ""
        match = re.match(r"[a-z]+", arch)
        if match:
            return _FAMILY_ALIASES.get(match.group(0), match.group(0)), "architecture metadata"
    names = [spec.display_name, spec.repo_id, spec.filename, spec.api_model, spec.path]
    if spec.kind == "bundled":
        names.append("gemma")
    for text in names:
        fam = _family_from_text(text or "")
        if fam:
            return fam, "name"
    return None, ""


def same_family_warnings(judge: ModelSpec, models: Iterable[ModelSpec]) -> list[str]:
    """A warning per judged model from the judge's own family (self-preference bias)."""
    family, how = model_family(judge)
    warnings = []
    for spec in models:
        if spec.kind == judge.kind and spec.ref() == judge.ref():
            warnings.append(
                f"the judge {judge.display_name} is also a judged model ({spec.display_name}): it may prefer "
                "its own writing; use a judge from another family"
            )
            continue
        other, how_other = model_family(spec)
        if family and other == family:
            warnings.append(
                f"the judge {judge.display_name} and the judged model {spec.display_name} are both from the "
                f"'{family}' family (by {how} / {how_other}): verdicts may favour it; "
                "prefer a judge from another family"
            )
    return warnings


# --- adaptive selection ----------------------------------------------------------------------


class PairPlanner:
    """Which pair to judge next: a sparse start, then pairs of models whose intervals still overlap.

    A bootstrap over a handful of outcomes gives intervals that are too narrow,
    so two models count as separated only once each has `min_comparisons`.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        done: set[str],
        initial_opponents: int = 2,
        seed: int = 0,
        min_comparisons: int = MIN_COMPARISONS,
    ):
        rng = random.Random(seed)
        self.by_models: dict[tuple[str, str], list[Pair]] = {}
        for p in pairs:
            self.by_models.setdefault(p.models, []).append(p)
        for slots in self.by_models.values():
            rng.shuffle(slots)  # spread the judged slots over sequences, runs and turns
        self.done = set(done)
        self.judged = Counter(p.models for p in pairs if p.pair_key in done)
        self.models = sorted({m for key in self.by_models for m in key})
        rng.shuffle(self.models)
        self.initial_opponents = initial_opponents
        self.min_comparisons = min_comparisons

    def _open(self, models: tuple[str, str]) -> Pair | None:
        return next((p for p in self.by_models.get(models, []) if p.pair_key not in self.done), None)

    def initial(self) -> list[Pair]:
        """One pair per edge of a ring over the models: each meets about `initial_opponents` others."""
        n = len(self.models)
        steps = range(1, min(max(1, (self.initial_opponents + 1) // 2), max(1, n // 2)) + 1)
        edges: list[tuple[str, str]] = []
        for step in steps:
            for i, m in enumerate(self.models):
                a, b = sorted((m, self.models[(i + step) % n]))
                if a != b and (a, b) not in edges:
                    edges.append((a, b))
        picks = []
        for key in edges:
            if self.judged[key]:
                continue
            pair = self._open(key)  # None when the two never answered the same brief
            if pair is not None:
                picks.append(pair)
        return picks

    def next(self, ratings: pd.DataFrame) -> tuple[Pair | None, str]:
        """The next pair, or None with why: 'separated' (no overlap left) or 'exhausted' (no pair left)."""
        rows = (
            ratings.set_index("model")
            if not ratings.empty
            else pd.DataFrame(columns=["rating", "comparisons"])
        )
        rating, seen = rows["rating"], rows["comparisons"]

        def unresolved(key: tuple[str, str]) -> bool:
            few = min(seen.get(key[0], 0), seen.get(key[1], 0)) < self.min_comparisons
            return few or intervals_overlap(ratings, *key)

        overlapping = [key for key in self.by_models if unresolved(key)]
        if not overlapping:
            return None, "separated"
        candidates = []
        for key in overlapping:
            pair = self._open(key)
            if pair is None:
                continue
            gap = abs(rating.get(key[0], 1000.0) - rating.get(key[1], 1000.0))
            candidates.append((self.judged[key], gap, key, pair))
        if not candidates:
            return None, "exhausted"
        candidates.sort(key=lambda c: (c[0], c[1], c[2]))
        return candidates[0][3], ""

    def mark(self, pair: Pair) -> None:
        self.done.add(pair.pair_key)
        self.judged[pair.models] += 1


# --- a whole evaluation ----------------------------------------------------------------------


@dataclass
class CompareSummary:
    """What a pairwise judging pass did, and the ratings it ended with."""

    judge: str
    scope: str
    calls: int = 0
    verdicts: int = 0
    failed: int = 0
    pairs_judged: int = 0
    stop_reason: str = ""
    warnings: list[str] = field(default_factory=list)
    ratings: pd.DataFrame = field(default_factory=pd.DataFrame)
    position_bias: pd.DataFrame = field(default_factory=pd.DataFrame)


def compare_judge_evaluation(
    store: Store,
    evaluation_id: str | Sequence[str],
    judge_spec: ModelSpec | None = None,
    pool: ModelPool | None = None,
    *,
    budget: int = DEFAULT_CALL_BUDGET,
    event: EventFn | None = None,
    groups: Sequence[CriterionGroup] = DEFAULT_GROUPS,
    budget_chars: int = DEFAULT_BUDGET_CHARS,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    cfg: JudgeConfig | None = None,
    generation: GenerationSettingsConfig | None = None,
    initial_opponents: int = 2,
    seed: int = 0,
    n_boot: int = 1000,
    should_stop: Callable[[], bool] | None = None,
) -> CompareSummary:
    """Judge pairs of an evaluation (or across evaluations) adaptively within `budget` judge calls.

    A call is one request to the judge model, retries included; a pair needs
    two (one per order), so a new pair starts only while two calls are left.
    Pairs this judge already judged are reused, so a second pass continues.
    The judge defaults to the (first) evaluation's configured judge.
    """
    from .jobs import evaluation_config, get_evaluation

    ids = [evaluation_id] if isinstance(evaluation_id, str) else list(evaluation_id)
    configs = [evaluation_config(get_evaluation(store, eid)) for eid in ids]
    cfg = cfg or configs[0].judge
    spec = judge_spec or next(iter(cfg.judges()), None)
    if spec is None:
        raise JudgeError(
            f"evaluation {ids[0]} has no judge configured; choose one (e.g. `storybench compare-judge "
            f"{ids[0]} --judge bundled`)"
        )
    generation = generation or configs[0].generation
    scope = scope_id(ids)
    emit = event or (lambda level, message, **f: store.append_event(ids[0], level, message, **f))
    stop = should_stop or (lambda: False)
    judge_name = spec.display_name
    summary = CompareSummary(judge=judge_name, scope=scope)

    responses = load_responses(store, ids)
    pairs = build_pairs(responses.values(), scope)
    if not pairs:
        raise JudgeError(
            f"nothing to compare in {scope}: pairwise judging needs at least two models with stored "
            "responses to the same sequence, run and prompt"
        )
    summary.warnings = same_family_warnings(spec, [m for c in configs for m in c.models])
    for warning in summary.warnings:
        emit("warning", f"pairwise judge: {warning}")

    existing = store.list_verdicts(scope, judge=judge_name)
    orders_done: dict[str, set[str]] = {}
    for v in existing:
        orders_done.setdefault(v["pair_key"], set()).add(v["order"])
    done = {k for k, orders in orders_done.items() if orders >= set(ORDERS)}
    partial = [p for p in pairs if p.pair_key in orders_done and p.pair_key not in done]
    planner = PairPlanner(pairs, done, initial_opponents, seed)
    queue = partial + [p for p in planner.initial() if p not in partial]
    verdicts = list(existing)

    own_pool = pool is None
    pool = pool or ModelPool()
    try:
        emit("info", f"pairwise judge {judge_name}: {len(pairs)} candidate pairs, budget {budget} calls")
        backend, _fresh = pool.get(spec, generation)
        use_batch = judge_width(backend, generation, 1)[0] > 1
        failures_in_a_row = 0
        while True:
            if stop():
                summary.stop_reason = "stopped"
                break
            if queue:
                pair, why = queue.pop(0), ""
            else:
                ratings = fit_ratings(verdict_outcomes(verdicts), n_boot=200, seed=seed)
                pair, why = planner.next(ratings)
            if pair is None:
                summary.stop_reason = why
                break
            missing = [o for o in ORDERS if o not in orders_done.get(pair.pair_key, set())]
            if summary.calls + len(missing) > budget:
                summary.stop_reason = "budget"
                break
            options = dict(
                groups=groups, budget_chars=budget_chars, max_tokens=max_tokens,
                temperature=cfg.temperature, max_retries=cfg.max_retries,
            )  # fmt: skip
            if use_batch:  # both orders together (a local model also checks the grammar after sampling)
                new_verdicts = judge_pair_orders(backend, judge_name, pair, missing, responses, **options)
            else:
                new_verdicts = [
                    judge_pair(backend, judge_name, pair, o, responses, **options) for o in missing
                ]
            for order, verdict in zip(missing, new_verdicts, strict=True):
                summary.calls += int(verdict["calls"])
                if not _store_verdict(store, verdict):
                    continue
                verdicts.append(verdict)
                orders_done.setdefault(pair.pair_key, set()).add(order)
                summary.verdicts += 1
                summary.failed += bool(verdict["error"])
                failures_in_a_row = failures_in_a_row + 1 if verdict["error"] else 0
                emit(*_verdict_line(verdict))
            planner.mark(pair)
            summary.pairs_judged += 1
            if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                summary.stop_reason = "failing"
                emit(
                    "error",
                    f"pairwise judge {judge_name}: {failures_in_a_row} verdicts in a row failed; stopped",
                )
                break
    finally:
        if own_pool:
            pool.release()
    summary.ratings = fit_ratings(verdict_outcomes(verdicts), n_boot=n_boot, seed=seed)
    summary.position_bias = position_bias(verdicts)
    emit(
        "info" if not summary.failed else "warning",
        f"pairwise judging finished ({summary.stop_reason}): {summary.pairs_judged} pairs, "
        f"{summary.verdicts} verdicts ({summary.failed} failed), {summary.calls} calls",
    )
    return summary


def _store_verdict(store: Store, verdict: Doc) -> bool:
    """Add a verdict; False when the same key appeared meanwhile (another process judged it)."""
    try:
        store.add_verdict(verdict)
    except StorybenchError as exc:
        if "already exists" in str(exc):
            return False
        raise
    return True


def _verdict_line(verdict: Doc) -> tuple[str, str]:
    where = (
        f"{verdict['sequence']} · run {verdict['run']} · prompt {int(verdict['prompt_index']) + 1}: "
        f"{verdict['model_a']} (A) vs {verdict['model_b']} (B)"
    )
    if verdict.get("error"):
        return "warning", f"pairwise verdict failed for {where}: {verdict['error']}"
    labels = ", ".join(f"{k} {v}" for k, v in (verdict.get("groups") or {}).items())
    return "info", f"pairwise verdict for {where}: {labels}"


# --- what the Results page shows -------------------------------------------------------------


@dataclass
class PairwiseReport:
    """Ratings per judge (and for the human votes), position bias, and human-vs-judge agreement."""

    scope: str
    ratings: dict[str, pd.DataFrame]
    pooled: pd.DataFrame
    position_bias: pd.DataFrame
    human_agreement: pd.DataFrame
    outcomes: pd.DataFrame


def pairwise_report(
    store: Store, evaluation_id: str | Sequence[str], *, n_boot: int = 1000
) -> PairwiseReport:
    """Everything pairwise about an evaluation, for the Results page (one call, plain frames)."""
    from .ratings import human_judge_agreement

    scope = scope_id(evaluation_id)
    verdicts = store.list_verdicts(scope)
    outcomes = all_outcomes(store, scope)
    ratings = {
        judge: fit_ratings(group, n_boot=n_boot)
        for judge, group in (outcomes.groupby("judge", sort=True) if not outcomes.empty else [])
    }
    judges_only = outcomes[outcomes["judge"] != HUMAN] if not outcomes.empty else outcomes
    return PairwiseReport(
        scope=scope,
        ratings=ratings,
        pooled=fit_ratings(judges_only, n_boot=n_boot),
        position_bias=position_bias(verdicts),
        human_agreement=human_judge_agreement(outcomes),
        outcomes=outcomes,
    )
