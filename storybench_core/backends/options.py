"""ModelSpec.options, typed per backend: what each backend reads, with its bounds.

A config is someone else's input on a shared server, so `options` is not a
free dict: each kind accepts only the keys its backend understands, with
types and ranges, and the whole value is capped in size and depth. The
checks are strict (no "yes" for a boolean, no "4" for a number).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_OPTIONS_BYTES = 16_384
"""The options of one model, as compact JSON."""
MAX_OPTIONS_DEPTH = 8
"""Nesting of dicts and lists inside options (extra_body is the only nested one)."""


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class LlamaOptions(_Options):
    """bundled, hf, path: llama.cpp settings (backends/llama.py)."""

    n_threads: int | None = Field(default=None, ge=1, le=1024)
    chat_format: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    flash_attn: bool = False


class ApiOptions(_Options):
    """api: request and retry settings (backends/openai_compat.py clips retries further)."""

    n_ctx: int | None = Field(default=None, ge=256, le=10_000_000)
    max_retries: int | None = Field(default=None, ge=0, le=10)
    backoff_base_s: float | None = Field(default=None, ge=0, le=60)
    backoff_max_s: float | None = Field(default=None, ge=0, le=300)
    max_retry_after_s: float | None = Field(default=None, ge=0, le=600)
    stream_usage: bool = True
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    extra_body: dict[str, Any] | None = None


class FakeOptions(_Options):
    """fake: the scripted test double (backends/fake.py)."""

    delay_s: float = Field(default=0.0, ge=0, le=5)
    fail_on: str | None = Field(default=None, max_length=1000)
    words: int = Field(default=40, ge=0, le=10_000)
    n_ctx: int | None = Field(default=None, ge=1, le=262_144)
    reply: str | None = None


OPTIONS_BY_KIND: dict[str, type[_Options]] = {
    "bundled": LlamaOptions,
    "hf": LlamaOptions,
    "path": LlamaOptions,
    "api": ApiOptions,
    "fake": FakeOptions,
}


def _depth(value: Any) -> int:
    """Nesting depth of dicts/lists, computed without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_OPTIONS_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def options_problems(kind: str, options: dict[str, Any]) -> list[str]:
    """What is wrong with a model's options for its kind ([] when they are fine)."""
    if not options:
        return []
    if _depth(options) > MAX_OPTIONS_DEPTH:
        return [f"options are nested more than {MAX_OPTIONS_DEPTH} levels deep"]
    try:
        size = len(json.dumps(options, separators=(",", ":"), ensure_ascii=False).encode())
    except (TypeError, ValueError):
        return ["options must hold plain JSON values (strings, numbers, booleans, lists, objects)"]
    if size > MAX_OPTIONS_BYTES:
        return [f"options take {size:,} bytes; at most {MAX_OPTIONS_BYTES:,} are allowed"]
    schema = OPTIONS_BY_KIND.get(kind)
    if schema is None:
        return []
    try:
        schema.model_validate(options)
    except ValidationError as exc:
        return [_describe(err, kind, schema) for err in exc.errors()]
    return []


def _describe(err: Any, kind: str, schema: type[_Options]) -> str:
    name = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        known = ", ".join(schema.model_fields)
        return f"options.{name} is not an option of kind '{kind}' (known: {known})"
    value = err.get("input")
    shown = (
        repr(value) if isinstance(value, str | int | float | bool) or value is None else type(value).__name__
    )
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"options.{name} = {shown} is invalid: {err['msg']}"
