"""The server's lifespan (ui/server.py): the worker starts with the server and stops with it;
an exposed server without sign-in does not start."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from storybench_core import serve
from ui import server, services


async def _enter_and_leave(during: Any = None) -> Any:
    async with server.lifespan(None) as state:
        return (during() if during else None), state


def test_the_worker_starts_with_the_server_and_stops_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(services.DISABLE_WORKER_ENV, raising=False)

    def inside() -> Any:
        worker = services.worker()
        assert worker is not None and worker.alive
        assert services.worker_started_with_server() is not None
        return worker

    worker, state = asyncio.run(_enter_and_leave(inside))
    assert state["server_mode"].single_user
    assert not worker.alive  # stopped at shutdown, not left to die with the process
    assert services.worker_started_with_server() is None


def test_an_exposed_server_without_sign_in_does_not_start(
    option: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv(serve.ALLOW_UNAUTHENTICATED_ENV, raising=False)
    monkeypatch.delenv(services.DISABLE_WORKER_ENV, raising=False)
    option("server.address", "0.0.0.0")

    def exit_(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", exit_)
    with pytest.raises(SystemExit) as exited:
        asyncio.run(_enter_and_leave())
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: refusing to serve on 0.0.0.0 without sign-in")
    assert services.worker_started_with_server() is None
