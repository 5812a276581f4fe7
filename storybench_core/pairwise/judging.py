"""Judging one pair: one order (`judge_pair`) or both together (`judge_pair_orders`)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from uuid import uuid4

from ..backends.base import Completion, GenerationSettings, Message, ModelBackend
from ..errors import JudgeError, StorybenchError
from ..judge import ask_one, ask_together
from ..store.base import Doc
from .pairs import (
    DEFAULT_BUDGET_CHARS,
    DEFAULT_GROUPS,
    DEFAULT_MAX_TOKENS,
    RAW_KEEP_CHARS,
    CriterionGroup,
    Pair,
    now_utc,
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
    ask_one(backend, task)
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
    ask_together(backend, tasks)
    return [t.verdict for t in tasks]
