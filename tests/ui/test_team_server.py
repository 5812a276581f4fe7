"""A team server end to end: its own worker from start to stop, OpenID Connect sign-in as a
viewer and as an operator in a real browser, and an auth proxy's headers.

Every server binds to 127.0.0.1 on a free port (tests/ui/servers.py): the Storybench
server as `make run` starts it, `oidc-provider-mock` as the identity provider, Debian's
chromium through Playwright. Screenshots land in tests/artifacts/.
"""

from __future__ import annotations

import json
import signal
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from storybench_core import access, audit, jobs, paths
from storybench_core.access import LOCAL_ADMIN
from storybench_core.errors import PermissionDenied
from storybench_core.store.base import Doc
from tests.ui.servers import (
    chromium,
    free_port,
    new_tab,
    oidc_provider,
    set_number,
    settle,
    shot,
    storybench_server,
)

pytestmark = pytest.mark.slow

VIEWER = ("vi@example.com", "Vi Ewer")
OPERATOR = ("op@ops.example.com", "Op Erator")
RUN_TIMEOUT_MS = 240_000


def wait_for_status(store: Any, evaluation_id: str, statuses: set[str], timeout_s: float) -> Doc:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        doc = store.get_evaluation(evaluation_id)
        if doc and doc["status"] in statuses:
            return doc
        time.sleep(0.2)
    pytest.fail(f"evaluation {evaluation_id} is {doc and doc['status']}, not one of {statuses}")


def test_the_server_owns_its_worker_from_start_to_stop(storybench_home: Path, store: Any, ui: Any) -> None:
    queued_before = jobs.enqueue(store, ui.fake_config("queued before the server"), LOCAL_ADMIN)
    with storybench_server(storybench_home, "worker") as server:
        # Nobody opens a browser: the server's own worker runs what was queued.
        done = wait_for_status(store, queued_before, {"completed"}, 60)
        assert done["worker_id"].split(":")[1] == str(server.proc.pid)
        slow = jobs.enqueue(store, ui.fake_config("cut by shutdown", runs=3, delay_s=0.3), LOCAL_ADMIN)
        wait_for_status(store, slow, {"running"}, 30)
        # SIGTERM: uvicorn shuts down gracefully, then re-raises the signal to exit with it.
        assert server.stop(30) in (0, -signal.SIGTERM)
    stopped = store.get_evaluation(slow)
    assert stopped["status"] == "stopped"  # settled and resumable, not left 'running'
    log = paths.log_path().read_text()
    assert "started with the server" in log and "worker stopped with the server" in log


# --- OpenID Connect --------------------------------------------------------------------------


@dataclass
class Team:
    url: str
    secrets: dict[str, Any]


def write_secrets(folder: Path, text: str) -> Path:
    path = folder / ".streamlit" / "secrets.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def team(storybench_home: Path, bundled_model: Path, tmp_path: Path) -> Iterator[Team]:
    """The server with an [auth] section pointing at an OIDC provider, and an access policy."""
    from oidc_provider_mock import User

    users = [
        User(sub=email, claims={"email": email, "email_verified": True, "name": name})
        for email, name in (VIEWER, OPERATOR)
    ]
    with oidc_provider(users) as idp:
        port = free_port()
        folder = tmp_path / "team"
        secrets = write_secrets(
            folder,
            f"""
[auth]
redirect_uri = "http://127.0.0.1:{port}/oauth2callback"
cookie_secret = "a-test-cookie-secret-of-enough-length"
client_id = "storybench-test"
client_secret = "storybench-test-secret"
server_metadata_url = "{idp}/.well-known/openid-configuration"

[storybench.access]
operators = ["@ops.example.com"]
""",
        )
        args = ["--secrets.files", str(secrets)]
        with storybench_server(storybench_home, "team", cwd=folder, port=port, args=args) as server:
            yield Team(url=server.url, secrets=tomllib.loads(secrets.read_text()))


def sign_in(tab: Any, url: str, email: str) -> None:
    tab.goto(url)
    tab.get_by_role("button", name="Sign in").click()
    tab.get_by_role("button", name=email, exact=True).click()  # the provider's page: one per user
    tab.get_by_role("heading", name="Configure", exact=True).wait_for()
    settle(tab)


def open_page(tab: Any, title: str) -> None:
    tab.get_by_role("link", name=title).click()
    tab.get_by_role("heading", name=title, exact=True).wait_for()
    settle(tab)


def test_sign_in_as_a_viewer_and_as_an_operator(team: Team, store: Any, ui: Any) -> None:
    voted_on = ui.run_evaluation(store, ui.fake_config("two models", models=ui.TWO_MODELS))
    with chromium() as browser:
        # A viewer: reads, votes; no Queue, Save or Stop anywhere.
        tab = new_tab(browser)
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.goto(team.url)
        tab.get_by_role("button", name="Sign in").wait_for()
        shot(tab, "signin")
        sign_in(tab, team.url, VIEWER[0])
        sidebar = tab.locator("[data-testid='stSidebar']")
        sidebar.get_by_text(VIEWER[1]).wait_for()
        sidebar.get_by_text("viewer", exact=True).wait_for()
        assert tab.get_by_role("button", name="Queue run").count() == 0
        tab.get_by_text("need the operator role; you are a viewer").wait_for()
        open_page(tab, "Run")
        tab.get_by_text("two models").first.wait_for()
        for label in ("Queue run", "Stop", "Resume", "Reset"):
            assert tab.get_by_role("button", name=label).count() == 0, label
        assert tab.get_by_text("Start a run from a saved configuration").count() == 0
        shot(tab, "signin-viewer-run")
        open_page(tab, "Vote")
        tab.get_by_text(f"Voting as {VIEWER[0]}").wait_for()
        tab.get_by_role("button", name="A is better").click()
        tab.get_by_text("You chose Response A").wait_for()

        # A forged call with the viewer's identity, straight into the core, is refused.
        policy = access.load_access_policy(team.secrets)
        viewer = access.principal_for(*VIEWER, source="oidc", policy=policy)
        with pytest.raises(PermissionDenied, match=r"vi@example.com \(viewer\) may not queue a run"):
            jobs.enqueue(store, ui.fake_config("forged"), viewer)
        with pytest.raises(PermissionDenied, match=r"may not stop a run: 'stop' needs the operator role"):
            jobs.request_stop(store, voted_on, viewer)

        tab.locator("[data-testid='stSidebar']").get_by_role("button", name="Sign out").click()
        tab.get_by_role("button", name="End session").click()  # the provider's sign-out page
        tab.get_by_role("button", name="Sign in").wait_for()

        # An operator: queues a tiny run on the bundled model; the server's worker completes it.
        tab = new_tab(browser)
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        sign_in(tab, team.url, OPERATOR[0])
        tab.locator("[data-testid='stSidebar']").get_by_text("operator", exact=True).wait_for()
        tab.get_by_label("Name", exact=True).fill("team run")
        set_number(tab, "Max tokens", 24)
        set_number(tab, "Runs per sequence", 1)
        tab.get_by_role("button", name="Check").click()
        tab.get_by_text("Configuration is valid").wait_for()
        settle(tab)
        tab.get_by_role("button", name="Queue run").click()
        tab.get_by_text("Queued evaluation").wait_for()
        tab.get_by_role("link", name="Watch it on Run").click()
        tab.get_by_role("heading", name="Run", exact=True).wait_for()
        tab.get_by_text("3 / 3 tasks (100%)").wait_for(timeout=RUN_TIMEOUT_MS)
        tab.get_by_text("completed", exact=True).first.wait_for()
        settle(tab)
        tab.get_by_role("button", name="Stop").wait_for()  # operators get the run controls
        shot(tab, "signin-operator-run")

        # The audit trail names both, with their roles.
        open_page(tab, "Activity")
        tab.get_by_role("combobox", name="Who").click()
        for email, _ in (VIEWER, OPERATOR):
            tab.get_by_role("option", name=email).wait_for()
        tab.keyboard.press("Escape")
        shot(tab, "signin-activity")
        assert tab.locator("[data-testid='stException']").count() == 0
    assert not errors, errors

    by_action = {(e.action, e.actor): e for e in audit.entries(store)}
    vote = by_action[("vote", VIEWER[0])]
    queue = by_action[("queue", OPERATOR[0])]
    assert (vote.role, vote.source, vote.actor_name) == ("viewer", "oidc", VIEWER[1])
    assert (queue.role, queue.source) == ("operator", "oidc")
    assert not [e for e in audit.entries(store) if e.actor == VIEWER[0] and e.action != "vote"]
    [team_run] = [d for d in store.list_evaluations() if d["name"] == "team run"]
    assert team_run["status"] == "completed"


# --- an auth proxy's headers ----------------------------------------------------------------


def test_an_auth_proxys_headers_sign_people_in(storybench_home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "proxied"
    secrets = write_secrets(folder, '[storybench.access]\noperators = ["@ops.example.com"]\n')
    headers = json.dumps({"X-Storybench-Email": "email", "X-Storybench-Name": "name"})
    args = ["--secrets.files", str(secrets), "--server.trustedUserHeaders", headers]
    with (
        storybench_server(storybench_home, "proxied", cwd=folder, args=args) as server,
        chromium() as browser,
    ):
        # Through the proxy: the test client sets the headers the proxy would.
        tab = new_tab(browser, {"X-Storybench-Email": "cy@ops.example.com", "X-Storybench-Name": "Cy Proxy"})
        tab.goto(server.url)
        tab.get_by_role("heading", name="Configure", exact=True).wait_for()
        settle(tab)
        sidebar = tab.locator("[data-testid='stSidebar']")
        sidebar.get_by_text("Cy Proxy").wait_for()
        sidebar.get_by_text("operator", exact=True).wait_for()
        sidebar.get_by_text("via the auth proxy").wait_for()
        tab.get_by_role("button", name="Queue run").wait_for()
        assert sidebar.get_by_role("button", name="Sign out").count() == 0
        shot(tab, "proxy-operator")

        # Around the proxy: no header, no page.
        bare = new_tab(browser)
        bare.goto(server.url)
        bare.get_by_text("carried no e-mail header").wait_for()
        assert bare.get_by_role("heading", name="Configure", exact=True).count() == 0
