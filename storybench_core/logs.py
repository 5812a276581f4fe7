"""Logging: a rotating file in STORYBENCH_HOME/logs, secrets masked everywhere."""

from __future__ import annotations

import logging
import logging.handlers
import os
import re

_URI_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@\s]+)@", re.I)
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASS)$", re.I)


def secret_values() -> list[str]:
    """Values of environment variables that look like secrets (long enough to be worth masking)."""
    return [v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 6]


def mask_secrets(text: str, extra: list[str] | None = None) -> str:
    """Replace URI passwords and known secret values with ***."""
    text = _URI_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    for value in [*secret_values(), *(extra or [])]:
        if value:
            text = text.replace(value, "***")
    return text


def mask_key(key: str | None) -> str:
    """Show a key as its first 3 and last 2 characters, for the UI."""
    if not key:
        return "(not set)"
    if len(key) <= 8:
        return "***"
    return f"{key[:3]}…{key[-2:]}"


class MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_configured = False


def setup_logging(verbose: bool = False) -> None:
    """Configure the 'storybench_core' and 'storybench' loggers once per process."""
    global _configured
    if _configured:
        return
    from .paths import log_path

    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s")
    file_handler = logging.handlers.RotatingFileHandler(
        log_path(), maxBytes=5_000_000, backupCount=3, encoding="utf-8"
    )
    file_handler.setFormatter(fmt)
    file_handler.addFilter(MaskingFilter())
    stderr = logging.StreamHandler()
    stderr.setLevel(logging.DEBUG if verbose else logging.WARNING)
    stderr.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    stderr.addFilter(MaskingFilter())
    for name in ("storybench_core", "storybench"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        logger.addHandler(file_handler)
        logger.addHandler(stderr)
        logger.propagate = False
    _configured = True
