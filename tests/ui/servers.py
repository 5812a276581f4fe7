"""Real servers for the slow dashboard tests, all on free loopback ports.

The Storybench server (`streamlit run storybench_server.py`, as `make run` starts it) with
this test's STORYBENCH_HOME, an OpenID Connect provider (`oidc-provider-mock`), and Debian's
chromium driven by Playwright. Screenshots land in tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
SERVER_SCRIPT = ROOT / "storybench_server.py"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, as a service manager stops it; the exit code (killed after timeout_s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def wait_healthy(server: Server, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if server.proc.poll() is not None:
            pytest.fail(f"streamlit exited with {server.proc.returncode}; log:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"streamlit did not answer within {timeout_s:.0f} s; log:\n{server.log_tail()}")


@contextmanager
def storybench_server(
    home: Path,
    name: str,
    *,
    cwd: Path = ROOT,
    args: Sequence[str] = (),
    port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[Server]:
    """The Storybench server with its own worker, logging to tests/artifacts/<name>-streamlit.log."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = ARTIFACTS / f"{name}-streamlit.log"
    full_env = dict(os.environ, STORYBENCH_HOME=str(home), **(env or {}))
    full_env.pop("STORYBENCH_DISABLE_WORKER", None)  # these tests need the server-owned worker
    command = [sys.executable, "-m", "streamlit", "run", str(SERVER_SCRIPT)]
    command += ["--server.port", str(port), "--server.address", "127.0.0.1", *args]
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(url=f"http://127.0.0.1:{port}", proc=proc, log=log)
    try:
        wait_healthy(server)
        yield server
    finally:
        server.stop(15)


@contextmanager
def oidc_provider(users: Sequence[Any]) -> Iterator[str]:
    """An OpenID Connect provider on a loopback port whose sign-in page offers these users."""
    oidc_mock = pytest.importorskip("oidc_provider_mock", reason="oidc-provider-mock is not installed")
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", free_port(), oidc_mock.app(user_claims=users), threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian chromium (a Playwright Browser)."""
    if not CHROMIUM.exists():
        pytest.skip(f"Debian chromium not found at {CHROMIUM}; install it with `apt-get install -y chromium`")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (requirements-dev)"
    )
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_tab(browser: Any, headers: Mapping[str, str] | None = None) -> Any:
    """A tab in a fresh context (its own cookies), optionally sending extra headers on every request."""
    context = browser.new_context(
        viewport={"width": 1400, "height": 1000}, extra_http_headers=dict(headers or {})
    )
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    return tab


def settle(page: Any) -> None:
    """Wait until Streamlit has finished the current script run."""
    page.wait_for_selector("[data-testid='stApp']")
    page.wait_for_function(
        '() => !document.querySelector(\'[data-testid="stStatusWidget"] [data-testid="stStatusWidgetRunningIcon"]\')'
    )
    page.wait_for_timeout(500)


def shot(page: Any, name: str) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its main area, so grow the viewport to fit."""
    height = page.evaluate(
        "() => Math.max(...['stMain', 'stMainBlockContainer'].map("
        "id => document.querySelector(`[data-testid='${id}']`)?.scrollHeight || 0)) + 160"
    )
    page.set_viewport_size({"width": 1400, "height": max(1000, min(int(height) + 80, 6000))})
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    page.set_viewport_size({"width": 1400, "height": 1000})


def set_number(page: Any, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Tab")
