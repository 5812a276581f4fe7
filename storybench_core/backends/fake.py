"""A scripted test double: deterministic text, no model, no network.

Used by fast tests of the runner, jobs, judge, store and pages; the slow
tests cover the same paths with the real bundled model. Configs may name
kind `fake` only when STORYBENCH_ENABLE_FAKE_BACKEND=1 (tests/conftest.py):
on a real server it could store forged responses under any model name. Its output depends
only on the conversation and the seed, so reproducibility checks mean
something. Options (ModelSpec.options): delay_s per streamed word,
fail_on (a substring of the prompt that makes the call raise ModelError),
words (reply length), n_ctx, reply (a fixed reply, e.g. judge JSON).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ModelError
from .base import BatchTokenCallback, Completion, GenerationSettings, Message, TokenCallback

_VOCAB = [
    "the",
    "lantern",
    "river",
    "city",
    "archive",
    "signal",
    "winter",
    "glass",
    "engine",
    "whisper",
    "orchard",
    "border",
    "ferry",
    "memory",
    "storm",
    "clockwork",
    "harbour",
    "silence",
    "mirror",
    "desert",
    "courier",
    "relay",
    "ember",
]


class FakeBackend:
    name = "fake"
    supports_json_schema = True
    supports_batch = True

    def __init__(
        self,
        *,
        delay_s: float = 0.0,
        fail_on: str | None = None,
        words: int = 40,
        n_ctx: int = 4096,
        reply: str | Callable[[Sequence[Message], GenerationSettings], str] | None = None,
    ) -> None:
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.words = words
        self.n_ctx = n_ctx
        self.reply = reply
        self.calls: list[list[Message]] = []
        self.closed = False

    @classmethod
    def from_spec(cls, spec: Any, generation: Any) -> FakeBackend:
        opts = dict(spec.options)
        return cls(
            delay_s=float(opts.get("delay_s", 0.0)),
            fail_on=opts.get("fail_on"),
            words=int(opts.get("words", 40)),
            n_ctx=int(opts.get("n_ctx", generation.n_ctx)),
            reply=opts.get("reply"),
        )

    def _text(self, messages: Sequence[Message], settings: GenerationSettings) -> str:
        if callable(self.reply):
            return self.reply(messages, settings)
        if isinstance(self.reply, str):
            return self.reply
        if settings.json_schema is not None:
            return json.dumps(_example_for_schema(settings.json_schema, settings.seed))
        digest = hashlib.sha256((json.dumps(list(messages)) + str(settings.seed)).encode()).digest()
        rng = random.Random(digest)
        last = messages[-1]["content"].split()[:3] if messages else []
        body = [rng.choice(_VOCAB) for _ in range(self.words)]
        return " ".join([*last, *body])[: settings.max_tokens * 8]

    def chat(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings,
        on_token: TokenCallback | None = None,
    ) -> Completion:
        self.calls.append([dict(m) for m in messages])
        if self.fail_on and any(self.fail_on in m["content"] for m in messages if m["role"] == "user"):
            raise ModelError(f"fake backend: scripted failure on '{self.fail_on}'")
        start = time.perf_counter()
        words = self._text(messages, settings).split(" ")
        finish = "stop"
        if len(words) > settings.max_tokens:
            words, finish = words[: settings.max_tokens], "length"
        out: list[str] = []
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            out.append(piece)
            if on_token is not None:
                on_token(piece)
            if self.delay_s:
                _pause(self.delay_s, on_token)
        elapsed = max(time.perf_counter() - start, 1e-6)
        prompt_tokens = self.count_tokens(messages)
        return Completion(
            text="".join(out),
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(words),
            generation_time_s=elapsed,
            prompt_tokens_evaluated=prompt_tokens,
            template="fake",
        )

    def chat_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        settings: Sequence[GenerationSettings],
        on_token: BatchTokenCallback | None = None,
        on_done: Callable[[int, Completion], None] | None = None,
    ) -> list[Completion]:
        results = []
        for i, (conv, s) in enumerate(zip(conversations, settings, strict=True)):
            cb = (lambda piece, i=i: on_token(i, piece)) if on_token else None
            done = self.chat(conv, s, cb)
            if on_done:
                on_done(i, done)
            results.append(done)
        return results

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return sum(len(m["content"].split()) + 4 for m in messages)

    def context_size(self) -> int:
        return self.n_ctx

    def close(self) -> None:
        self.closed = True


def _pause(seconds: float, on_token: TokenCallback | None) -> None:
    """Sleep in short slices with an empty piece between them: the caller's chance to stop."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))
        if on_token is not None and left > 0.05:
            on_token("")


def _example_for_schema(schema: dict[str, Any], seed: int) -> Any:
    """A deterministic value that satisfies a simple JSON schema (objects, ints, strings)."""
    rng = random.Random(seed)
    kind = schema.get("type")
    if kind == "object":
        return {
            k: _example_for_schema(v, seed + i)
            for i, (k, v) in enumerate(schema.get("properties", {}).items())
        }
    if kind == "integer":
        return rng.randint(int(schema.get("minimum", 1)), int(schema.get("maximum", 5)))
    if kind == "number":
        return float(schema.get("minimum", 0))
    if kind == "array":
        return [_example_for_schema(schema.get("items", {}), seed)]
    if "enum" in schema:
        return schema["enum"][seed % len(schema["enum"])]
    return "A short justification."
