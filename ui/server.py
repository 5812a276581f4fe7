"""The server's own start and stop: the st.App lifespan that `storybench_server.py` runs.

At start it checks who may reach the server (storybench_core.serve, with Streamlit's own
settings: the address it binds, `[auth]`, `server.trustedUserHeaders`) and refuses to
serve others with no sign-in; then it starts the worker, so queued runs start before
anyone opens a browser. At shutdown (Ctrl+C, SIGTERM) it stops the worker: the run in
progress ends as `stopped`, and Resume finishes only what is missing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from storybench_core.errors import StorybenchError
from storybench_core.logs import setup_logging
from storybench_core.redact import redact
from ui import auth

log = logging.getLogger("storybench.server")


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
    setup_logging()
    try:
        mode = auth.server_mode()
    except StorybenchError as exc:
        # One line and exit code 2, as the CLI gives a user-fixable error. Raising instead
        # would add uvicorn's traceback and exit 3; nothing has been served or started yet.
        print(f"error: {redact(str(exc))}", file=sys.stderr, flush=True)
        os._exit(2)
    log.info("serving on %s, sign-in: %s", mode.where(), mode.auth)
    # Imported now, not with this module: its caches are best declared once the runtime exists.
    from ui import services

    worker = await asyncio.to_thread(services.start_with_server)
    if worker is not None:
        log.info("worker %s started with the server", worker.worker_id)
    try:
        yield {"server_mode": mode}
    finally:
        await asyncio.to_thread(services.stop_with_server)
        log.info("worker stopped with the server")
