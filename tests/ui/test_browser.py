"""End to end in a real browser: configure a tiny run on the bundled model, watch it, read its responses.

Starts the Storybench server (`streamlit run storybench_server.py`, as `make run`
does) on a free loopback port with this test's STORYBENCH_HOME (the bundled model is
hard-linked in by the root conftest) and its server-owned worker, then drives
Debian's chromium through Playwright (tests/ui/servers.py).
Screenshots of every page land in tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ui.servers import chromium, new_tab, set_number, settle, shot, storybench_server

RUN_TIMEOUT_MS = 240_000

pytestmark = pytest.mark.slow


@pytest.fixture
def server(storybench_home: Path, bundled_model: Path) -> Iterator[str]:
    """The dashboard on a free loopback port, with its own worker, logging to a file."""
    with storybench_server(storybench_home, "browser") as running:
        yield running.url


@pytest.fixture
def page(server: str):
    with chromium() as browser:
        yield new_tab(browser)


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
