"""Judging one pair: one order (`judge_pair`) or both together (`judge_pair_orders`)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from uuid import uuid4

from ..backends.base import Message, ModelBackend
from ..errors import JudgeError
from ..store.base import Doc
from ..structured_ask import StructuredAsk, ask_one, ask_together
from .pairs import (
    DEFAULT_BUDGET_CHARS,
    DEFAULT_GROUPS,
    DEFAULT_MAX_TOKENS,
    RAW_KEEP_CHARS,
    CriterionGroup,
    Pair,
)
from .prompt import earlier_briefs, pair_messages, parse_verdict, verdict_schema

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


def verdict_task(
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
) -> StructuredAsk[tuple[dict[str, str], str]]:
    """One order of one pair to ask for: its verdict document, messages, schema, seeds and retries."""
    model_a, model_b, rid_a, rid_b = pair.shown(order)
    doc_a, doc_b = responses[rid_a], responses[rid_b]
    text_a, text_b = str(doc_a.get("response") or ""), str(doc_b.get("response") or "")
    constrained = bool(getattr(backend, "supports_json_schema", False))
    verdict: Doc = {
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
    brief = str(doc_a.get("prompt_text") or "")

    def make(budget: int) -> list[Message]:
        return pair_messages(brief, earlier_briefs(doc_a), text_a, text_b, groups, budget)

    messages: list[Message] = []
    setup_error = None
    try:
        messages, used = _fit_budget(backend, make, budget_chars, max_tokens)
        verdict["budget_chars"] = used
        verdict["clipped"] = max(len(text_a), len(text_b)) > used
    except JudgeError as exc:
        setup_error = str(exc)

    def accept(answer: tuple[dict[str, str], str]) -> None:
        labels, reason = answer
        verdict.update(groups=labels, reason=reason)

    return StructuredAsk(
        verdict,
        messages,
        parse=lambda text: parse_verdict(text, groups),
        accept=accept,
        seed_for=lambda retry: _seed(pair.pair_key, order, attempt, retry),
        temperature=temperature,
        max_tokens=max_tokens,
        max_retries=max_retries,
        schema=verdict_schema(groups) if constrained else None,
        retry_hint="Reply again with only the JSON object, one label per group.",
        what="verdict",
        raw_keep_chars=RAW_KEEP_CHARS,
        count_calls=True,
        setup_error=setup_error,
    )


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
    task = verdict_task(
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
    ask_one(backend, task)
    return task.doc


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
        verdict_task(
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
    ask_together(backend, tasks)
    return [t.doc for t in tasks]
