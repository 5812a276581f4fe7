"""The ModelBackend seam: every model (local GGUF, API, test double) speaks this.

A backend receives whole conversations (OpenAI-style message lists), never
pre-formatted strings, so that a backend may keep a conversation's prefix in
its KV cache and later decode several conversations together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}

# Called with each new piece of text as it streams. Raise StopRequested (errors.py)
# to abandon the generation; the backend then returns nothing for it.
TokenCallback = Callable[[str], None]
# Batch variant: (conversation index, new text).
BatchTokenCallback = Callable[[int, str], None]


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings for one call; plain data, hashable."""

    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int = 1
    stop: tuple[str, ...] = ()
    # When set, the reply must be JSON matching this schema (judge calls).
    json_schema: dict[str, Any] | None = field(default=None, hash=False, compare=False)


@dataclass
class Completion:
    """One finished generation and what it cost."""

    text: str
    finish_reason: str  # "stop" | "length" | "error"
    prompt_tokens: int
    completion_tokens: int
    generation_time_s: float
    # Prompt tokens actually evaluated (prompt_tokens minus those reused from cache).
    prompt_tokens_evaluated: int | None = None
    # Time to first token, when the backend streams.
    first_token_s: float | None = None
    # Which chat template formatted the prompt ("gguf:<name>", "plain-transcript", "api").
    template: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        if self.generation_time_s <= 0:
            return 0.0
        return self.completion_tokens / self.generation_time_s


@runtime_checkable
class ModelBackend(Protocol):
    """What the runner and the judge need from a model."""

    name: str
    # Capability flags: the core chooses by flag and records what it chose.
    supports_json_schema: bool
    supports_batch: bool

    def chat(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings,
        on_token: TokenCallback | None = None,
    ) -> Completion:
        """Generate the assistant's next turn for one conversation."""
        ...

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens this conversation takes once formatted (for context fitting)."""
        ...

    def context_size(self) -> int:
        """The context window in tokens the loaded model runs with."""
        ...

    def close(self) -> None:
        """Free the model (RAM / VRAM). Idempotent."""
        ...


@runtime_checkable
class BatchModelBackend(ModelBackend, Protocol):
    """A backend that decodes several independent conversations together."""

    def chat_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        settings: Sequence[GenerationSettings],
        on_token: BatchTokenCallback | None = None,
        on_done: Callable[[int, Completion], None] | None = None,
    ) -> list[Completion]:
        """Generate one turn for every conversation; on_done fires as each finishes."""
        ...
