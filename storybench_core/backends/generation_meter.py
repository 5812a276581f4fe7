"""What one generation really cost (tokens, timings), filled in while it runs; any local decoder."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .base import Completion


@dataclass
class GenerationMeter:
    """What one generation really cost, filled in while it runs."""

    prompt_tokens: int
    started_s: float = field(default_factory=time.perf_counter)
    prompt_tokens_evaluated: int | None = None
    first_token_at_s: float | None = None
    sampled: list[int] = field(default_factory=list)

    def on_eval(self, n_tokens: int) -> None:
        if self.prompt_tokens_evaluated is None:  # the first eval of a call is the prompt suffix
            self.prompt_tokens_evaluated = n_tokens

    def on_sample(self, token: int) -> None:
        if self.first_token_at_s is None:
            self.first_token_at_s = time.perf_counter()
        self.sampled.append(token)

    def finish(
        self,
        text: str,
        finish_reason: str,
        template: str,
        *,
        is_eog: bool,
        extra: dict[str, Any] | None = None,
    ) -> Completion:
        """A Completion; `is_eog`: the last sampled token ended the turn (not part of the text)."""
        ended_s = time.perf_counter()
        completion_tokens = len(self.sampled) - (1 if is_eog and self.sampled else 0)
        first_token_s = None if self.first_token_at_s is None else self.first_token_at_s - self.started_s
        extra = dict(extra or {})
        if self.first_token_at_s is not None and completion_tokens > 1:
            extra["decode_tokens_per_s"] = round(
                (completion_tokens - 1) / max(ended_s - self.first_token_at_s, 1e-9), 2
            )
        return Completion(
            text=text,
            finish_reason=finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion_tokens,
            generation_time_s=ended_s - self.started_s,
            prompt_tokens_evaluated=self.prompt_tokens_evaluated,
            first_token_s=first_token_s,
            template=template,
            extra=extra,
        )
