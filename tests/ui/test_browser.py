"""End to end in a real browser: configure a tiny run on the bundled model, watch it, read its responses.

Starts `streamlit run` on a free loopback port with this test's STORYBENCH_HOME
(the bundled model is hard-linked in by the root conftest) and its own
server-owned worker, then drives Debian's chromium through Playwright.
Screenshots of every page land in tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
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
RUN_TIMEOUT_MS = 240_000

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if server.poll() is not None:
            pytest.fail(f"streamlit exited with {server.returncode}; log:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"streamlit did not answer within {timeout_s:.0f} s; log:\n{log.read_text()[-3000:]}")


@pytest.fixture
def server(storybench_home: Path, bundled_model: Path) -> Iterator[str]:
    """The dashboard on a free loopback port, with its own worker, logging to a file."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = ARTIFACTS / "browser-streamlit.log"
    env = dict(os.environ, STORYBENCH_HOME=str(storybench_home))
    env.pop("STORYBENCH_DISABLE_WORKER", None)  # this test needs the server-owned worker
    command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py"]
    command += ["--server.port", str(port), "--server.address", "127.0.0.1"]
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def page(server: str):
    if not CHROMIUM.exists():
        pytest.skip(f"Debian chromium not found at {CHROMIUM}; install it with `apt-get install -y chromium`")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (requirements-dev)"
    )
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            tab.set_default_timeout(30_000)
            yield tab
        finally:
            browser.close()


def settle(page) -> None:
    """Wait until Streamlit has finished the current script run."""
    page.wait_for_selector("[data-testid='stApp']")
    page.wait_for_function(
        '() => !document.querySelector(\'[data-testid="stStatusWidget"] [data-testid="stStatusWidgetRunningIcon"]\')'
    )
    page.wait_for_timeout(500)


def shot(page, name: str) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its main area, so grow the viewport to fit."""
    height = page.evaluate(
        "() => Math.max(...['stMain', 'stMainBlockContainer'].map("
        "id => document.querySelector(`[data-testid='${id}']`)?.scrollHeight || 0)) + 160"
    )
    page.set_viewport_size({"width": 1400, "height": max(1000, min(int(height) + 80, 6000))})
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    page.set_viewport_size({"width": 1400, "height": 1000})


def set_number(page, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Tab")


def test_configure_run_and_read_results_in_a_browser(server: str, page) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # Configure: a tiny run on the bundled model.
    page.goto(server)
    page.get_by_role("heading", name="Configure", exact=True).wait_for()
    settle(page)
    page.get_by_label("Name", exact=True).fill("browser run")
    set_number(page, "Max tokens", 24)
    set_number(page, "Runs per sequence", 1)
    page.get_by_role("button", name="Check").click()
    page.get_by_text("Configuration is valid").wait_for()
    settle(page)
    shot(page, "configure")
    page.get_by_role("button", name="Queue run").click()
    page.get_by_text("Queued evaluation").wait_for()

    # Run: follow the link and watch it finish (the server's own worker runs it).
    page.get_by_role("link", name="Watch it on Run").click()
    page.get_by_role("heading", name="Run", exact=True).wait_for()
    page.get_by_text("browser run").first.wait_for()
    page.get_by_text("3 / 3 tasks (100%)").wait_for(timeout=RUN_TIMEOUT_MS)
    page.get_by_text("completed", exact=True).first.wait_for()
    settle(page)
    page.get_by_text("Console ·").click()  # collapsed once the run is over; the whole history is inside
    page.get_by_text("completed: 3 responses stored").wait_for()
    shot(page, "run")
    assert page.locator("[data-testid='stAlertContentError']").count() == 0

    # Results: the three responses are there; read one in full.
    page.get_by_role("link", name="Results").click()
    page.get_by_role("heading", name="Results", exact=True).wait_for()
    settle(page)
    responses = page.locator("[data-testid='stMetric']", has_text="Responses")
    assert responses.locator("[data-testid='stMetricValue']").inner_text() == "3"
    page.get_by_role("combobox", name="Read a response").click()
    page.get_by_role("option").first.click()
    page.get_by_text("Conversation the model saw").wait_for()
    settle(page)
    shot(page, "results")

    for name, heading in (("models", "Models"), ("hardware", "Hardware")):
        page.get_by_role("link", name=heading).click()
        page.get_by_role("heading", name=heading, exact=True).wait_for()
        settle(page)
        shot(page, name)
    page.get_by_text("No GPU: models run on CPU").or_(page.get_by_text("VRAM")).first.wait_for()

    assert page.locator("[data-testid='stException']").count() == 0
    assert not errors, errors
