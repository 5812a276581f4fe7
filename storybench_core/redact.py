"""The one redactor: every known secret value and every credential-shaped text becomes ***.

Built from `credentials.known_secret_values()` (keys named by presets and the
allowlist, HF_TOKEN, the MongoDB URI's password, `[api_keys]` and the other
values of secrets.toml, secret-looking environment variables) plus patterns for
URL userinfo, secret query-string parameters, bearer tokens and common key
shapes. Applied in the log formatter (after tracebacks are formatted), at the
store's write boundary and where pages show messages.
"""

from __future__ import annotations

import re
from typing import Any

from . import credentials

MASK = "***"

# scheme://user:password@host — the password runs to the last '@' before the host, so
# 'mongodb://user:p@ss@host' loses all of 'p@ss'; it never crosses '?', whitespace or quotes.
_USERINFO = re.compile(
    r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<user>[^:/?#@\s'\"<>]*):(?P<pw>[^?#\s'\"<>]*)@"
    r"(?=[^@?#\s'\"<>]*(?:[?#\s'\"<>]|$))",
    re.I,
)
# scheme://TOKEN@host with no password: only token-like user names (16+ characters).
_USER_TOKEN = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)[A-Za-z0-9._~%+-]{16,}@", re.I)
_QUERY = re.compile(
    r"(?P<name>[?&;][\w.-]*(?:" + credentials.SECRET_PARAM.pattern + r")[\w.-]*=)[^&#\s'\"<>]+", re.I
)
_BEARER = re.compile(r"(?P<name>\bBearer\s+)[A-Za-z0-9._~+/=-]{12,}")
# Well-known key shapes, so a key nobody registered is still caught (OpenAI, Hugging Face).
_SHAPES = re.compile(r"\b(?:sk-[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{30,})\b")
# Short secrets are matched as whole tokens only, so that 'love' does not mask 'lovely'.
_SHORT = 12

_compiled: tuple[frozenset[str], re.Pattern[str] | None] = (frozenset(), None)


def _values_pattern(values: frozenset[str]) -> re.Pattern[str] | None:
    global _compiled
    if values == _compiled[0]:
        return _compiled[1]
    parts = []
    for value in sorted(values, key=len, reverse=True):
        escaped = re.escape(value)
        parts.append(escaped if len(value) >= _SHORT else rf"(?<![A-Za-z0-9]){escaped}(?![A-Za-z0-9])")
    pattern = re.compile("|".join(parts)) if parts else None
    _compiled = (values, pattern)
    return pattern


class Redactor:
    """Masks one snapshot of the known secrets (plus `extra` values) in text and in documents."""

    def __init__(self, extra: frozenset[str] = frozenset()) -> None:
        values = frozenset(credentials.known_secret_values()) | {v for v in extra if v and len(v) >= 4}
        self._values = _values_pattern(frozenset(values))

    def text(self, text: str) -> str:
        if self._values is not None:
            text = self._values.sub(MASK, text)
        if "://" in text:
            text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
            text = _USER_TOKEN.sub(lambda m: f"{m['scheme']}{MASK}@", text)
        if "=" in text:
            text = _QUERY.sub(lambda m: f"{m['name']}{MASK}", text)
        text = _BEARER.sub(lambda m: f"{m['name']}{MASK}", text)
        return _SHAPES.sub(MASK, text)

    def value(self, value: Any) -> Any:
        """Strings anywhere in dicts, lists and tuples redacted; other values as they are."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.value(v) for v in value)
        return value


def redact(text: str, extra: list[str] | tuple[str, ...] | None = None) -> str:
    """text with every known secret (and each of `extra`) replaced by ***."""
    return Redactor(frozenset(extra or ())).text(str(text))


def redact_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a document with every string in it redacted (the store's write boundary)."""
    return Redactor().value(doc)
