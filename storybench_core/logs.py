"""Logging: a rotating file in STORYBENCH_HOME/logs, every line (tracebacks too) through the redactor."""

from __future__ import annotations

import logging
import logging.handlers

from .errors import StorybenchError
from .redact import redact


class RedactingFormatter(logging.Formatter):
    """Formats a record, traceback included, then masks every known secret in the result."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


_configured = False


def setup_logging(verbose: bool = False) -> None:
    """Configure the 'storybench_core' and 'storybench' loggers once per process."""
    global _configured
    if _configured:
        return
    from .paths import log_path

    fmt = RedactingFormatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s")
    file_handler: logging.Handler | None
    try:
        file_handler = logging.handlers.RotatingFileHandler(
            log_path(), maxBytes=5_000_000, backupCount=3, encoding="utf-8"
        )
        file_handler.setFormatter(fmt)
    except (OSError, StorybenchError):
        # A read-only STORYBENCH_HOME: no log file, and the command itself then says what is wrong
        # (a StoreError naming the folder) instead of a traceback from here.
        file_handler = None
    stderr = logging.StreamHandler()
    stderr.setLevel(logging.DEBUG if verbose else logging.WARNING)
    stderr.setFormatter(RedactingFormatter("%(levelname)s: %(message)s"))
    for name in ("storybench_core", "storybench"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        if file_handler is not None:
            logger.addHandler(file_handler)
        logger.addHandler(stderr)
        logger.propagate = False
    _configured = True
