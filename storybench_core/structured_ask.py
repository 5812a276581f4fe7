"""Ask a model for a valid structured answer: one retry state machine for every judge.

The rubric judge (judge.py) and the pairwise judge (pairwise/judging.py) both ask a model for a
JSON object, validate it, and on an unusable answer ask again with the reason fed back (a retry
that repeats the same question at temperature 0 repeats its answer), at most `max_retries` more
times, each try with its own seed; then they record a failure — raw output and error kept,
never an invented value. `StructuredAsk` is that machine, parameterised by what is asked
(messages, schema, seeds) and how an answer is parsed and kept; `ask_one` drives it through
`chat`, `ask_together` drives many through `chat_batch` in rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from .backends.base import Completion, GenerationSettings, Message, ModelBackend
from .errors import JudgeError, StorybenchError

T = TypeVar("T")

FEEDBACK_CHARS = 2000  # of a rejected answer, quoted back in the retry


def now_utc() -> datetime:
    return datetime.now(UTC)


class StructuredAsk(Generic[T]):
    """One structured answer being asked for, with bounded retries; `doc` is the record it fills.

    parse(text) returns the parsed answer or raises JudgeError with the reason; accept(answer)
    stores it in `doc`. The record gets raw_output, finish_reason, retries, error, created_at,
    generation_time_s and completion_tokens either way.
    """

    def __init__(
        self,
        doc: dict[str, Any],
        messages: list[Message] | None,
        *,
        parse: Callable[[str], T],
        accept: Callable[[T], None],
        seed_for: Callable[[int], int],
        temperature: float,
        max_tokens: int,
        max_retries: int,
        schema: dict[str, Any] | None = None,
        retry_hint: str = "Reply again with only the JSON object.",
        what: str = "answer",
        max_tokens_name: str = "max_tokens",
        raw_keep_chars: int = 20_000,
        count_calls: bool = False,
        setup_error: str | None = None,
    ) -> None:
        self.doc = doc
        self.messages: list[Message] = list(messages or [])
        self._parse, self._accept, self._seed_for = parse, accept, seed_for
        self.temperature, self.max_tokens, self.max_retries = temperature, max_tokens, max_retries
        self.schema = schema
        self.retry_hint, self.what, self.raw_keep_chars = retry_hint, what, raw_keep_chars
        self.max_tokens_name = max_tokens_name
        self.count_calls = count_calls
        self.tries = 0
        self.tokens = 0
        self.error = ""
        self.started = time.perf_counter()
        self.finished = False
        if setup_error is not None:  # the question itself could not be built (e.g. does not fit)
            self.doc.update(error=setup_error, created_at=now_utc())
            self.finished = True

    @property
    def pending(self) -> bool:
        return not self.finished

    def settings(self) -> GenerationSettings:
        """The next try's settings (its own seed per retry); counts the call when asked to."""
        self.doc["retries"] = self.tries
        if self.count_calls:
            self.doc["calls"] = int(self.doc.get("calls") or 0) + 1
        settings = GenerationSettings(
            temperature=self.temperature,
            top_p=1.0,
            max_tokens=self.max_tokens,
            seed=self._seed_for(self.tries),
            json_schema=self.schema,
        )
        self.doc["seed"] = settings.seed
        return settings

    def call_failed(self, exc: StorybenchError | str) -> None:
        """The model call itself failed (not the answer): try again or give up."""
        self.error = f"judge model failed: {exc}"
        self.doc["raw_output"] = None
        self._next_try()

    def take(self, completion: Completion) -> None:
        """Validate one answer: keep it, or feed the reason back for the next try."""
        if completion.finish_reason == "error":
            self.call_failed(str(completion.extra.get("error") or "no answer"))
            return
        self.tokens += completion.completion_tokens
        self.doc["raw_output"] = completion.text[: self.raw_keep_chars]
        self.doc["finish_reason"] = completion.finish_reason
        if completion.extra.get("structured_output"):
            self.doc["structured_output"] = completion.extra["structured_output"]
        try:
            answer = self._parse(completion.text)
        except JudgeError as exc:
            error = str(exc)
            if completion.finish_reason == "length":
                error += f" (the answer hit {self.max_tokens_name} = {self.max_tokens})"
            self.error = error
            invalid = self.doc.get("invalid_outputs")
            if isinstance(invalid, list):
                invalid.append(completion.text[:4000])
            self.messages = [
                *self.messages[:2],
                {"role": "assistant", "content": completion.text[:FEEDBACK_CHARS]},
                {"role": "user", "content": f"That answer could not be used: {error}. {self.retry_hint}"},
            ]
            self._next_try()
            return
        self._accept(answer)
        self.doc["error"] = None
        self._close()

    def _next_try(self) -> None:
        self.tries += 1
        if self.tries > self.max_retries:
            self.doc["error"] = f"no valid {self.what} after {self.max_retries + 1} tries: {self.error}"
            self._close()

    def _close(self) -> None:
        self.finished = True
        self.doc["completion_tokens"] = self.tokens
        self.doc["generation_time_s"] = round(time.perf_counter() - self.started, 4)
        self.doc["created_at"] = now_utc()


def ask_one(
    backend: ModelBackend, task: StructuredAsk[Any], on_token: Callable[[str], None] | None = None
) -> None:
    """Ask through `chat` until the task has a valid answer or no tries left."""
    while task.pending:
        settings = task.settings()
        try:
            completion = backend.chat(task.messages, settings, on_token)
        except StorybenchError as exc:
            task.call_failed(exc)
            continue
        task.take(completion)


def ask_together(
    backend: ModelBackend,
    tasks: Sequence[StructuredAsk[Any]],
    on_token: Callable[[int, str], None] | None = None,
) -> None:
    """Ask through `chat_batch` in rounds: each round sends every task still pending in one call,
    so a retry only re-asks the ones whose answer could not be used."""
    chat_batch = getattr(backend, "chat_batch", None)
    if chat_batch is None:
        for task in tasks:
            ask_one(backend, task)
        return
    while pending := [t for t in tasks if t.pending]:
        settings = [t.settings() for t in pending]
        try:
            completions = chat_batch([t.messages for t in pending], settings, on_token)
        except StorybenchError as exc:
            for task in pending:
                task.call_failed(exc)
            continue
        for n, task in enumerate(pending):
            if n < len(completions):
                task.take(completions[n])
            else:
                task.call_failed("the backend returned no answer for this request")
