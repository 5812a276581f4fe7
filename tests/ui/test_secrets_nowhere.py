"""Secrets planted in the environment and secrets.toml appear nowhere: store, log file, exports, pages.

An evaluation runs with API models against a loopback server that echoes the key
it was sent (and the hub token) into its answers. One model asks for HF_TOKEN as
its key, one targets the cloud metadata address: both are refused.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from storybench_core import jobs, logs, paths, results
from storybench_core.access import LOCAL_ADMIN
from storybench_core.config import parse_config
from storybench_core.views import results as results_view
from storybench_core.views import scores as scores_view
from tests.backends.openai_servers import Reply, ScriptedOpenAIServer

TEAM_KEY = "team-endpoint-key-7f3a9c1e5b"  # the key the operator bound to the loopback endpoint
ENV_SECRETS = {
    "HF_TOKEN": "hf_plantedHubToken8c2e4a6f0b1d3",
    "OPENAI_API_KEY": "sk-planted-openai-4d1c9e7a2b5f8e0c",
    "AWS_SECRET_ACCESS_KEY": "planted/aws+secret=9e8d7c6b5a",
    "STORYBENCH_MONGODB_URI": "mongodb://ann:env-db-pass-51c3@127.0.0.1:9/bench",
    "TEAM_KEY": TEAM_KEY,
}
TOML_SECRETS = {"toml-db-pass-a8b7", "toml-provider-key-3e4f5a6b"}
SECRETS = {*ENV_SECRETS.values(), "env-db-pass-51c3", *TOML_SECRETS} - {ENV_SECRETS["STORYBENCH_MONGODB_URI"]}


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as srv:
        yield srv


def _secrets_toml(folder: Path, server: ScriptedOpenAIServer, *, with_mongodb: bool) -> None:
    (folder / ".streamlit").mkdir(exist_ok=True)
    lines = ['mongodb_uri = "mongodb://bob:toml-db-pass-a8b7@127.0.0.1:9/x"'] if with_mongodb else []
    lines += [
        "[api_keys]",
        'PROVIDER_KEY = "toml-provider-key-3e4f5a6b"',
        "[storybench.endpoints]",
        f'"{server.base_url}" = "TEAM_KEY"',
    ]
    (folder / ".streamlit" / "secrets.toml").write_text("\n".join(lines) + "\n")


def _store_dump(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {t: conn.execute(f'SELECT * FROM "{t}"').fetchall() for t in tables}
    finally:
        conn.close()
    assert {"evaluations", "responses", "events"} <= set(tables)
    raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))  # the WAL too
    return repr(rows) + raw.decode("utf-8", errors="replace")


@pytest.fixture
def log_file(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The real logging setup (once per process otherwise), writing to this test's log file."""
    loggers = [logging.getLogger(name) for name in ("storybench_core", "storybench")]
    before = [(list(lg.handlers), lg.propagate, lg.level) for lg in loggers]
    monkeypatch.setattr(logs, "_configured", False)
    logs.setup_logging()
    yield paths.log_path()
    for lg, (handlers, propagate, level) in zip(loggers, before, strict=True):
        for handler in lg.handlers:
            if handler not in handlers:
                handler.close()
        lg.handlers, lg.propagate, lg.level = handlers, propagate, level


def _log_text(log_file: Path) -> str:
    logging.getLogger("storybench_core.test").error(
        "a failure quoting every secret", exc_info=RuntimeError(" ".join(sorted(SECRETS)))
    )
    for handler in logging.getLogger("storybench_core").handlers:
        if isinstance(handler, logging.FileHandler):
            handler.flush()
    text = log_file.read_text(encoding="utf-8")
    assert "cannot load model thief" in text and "a failure quoting every secret" in text
    return text


def _found(text: str) -> list[str]:
    return sorted(s for s in SECRETS if s in text)


def test_planted_secrets_reach_no_store_log_export_or_page(
    ui, store, server: ScriptedOpenAIServer, log_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in ENV_SECRETS.items():
        monkeypatch.setenv(name, value)
    _secrets_toml(tmp_path, server, with_mongodb=True)
    # A hostile endpoint: it echoes the key it was sent and the hub token into its stories.
    server.enqueue(*[Reply.stream(["My key is ", TEAM_KEY, " and ", ENV_SECRETS["HF_TOKEN"], "."])] * 3)
    api = {"kind": "api", "base_url": server.base_url, "api_model": "story-model", "timeout_s": 10}
    config = parse_config(
        {
            "name": "secrets nowhere",
            "models": [
                api | {"name": "echo"},
                api | {"name": "thief", "api_key_env": "HF_TOKEN"},
                api | {"name": "metadata", "base_url": "http://169.254.169.254/v1"},
            ],
            "sequences": ["film"],
            "generation": {"runs": 1, "max_tokens": 64},
        }
    )
    eid = jobs.enqueue(store, config, LOCAL_ADMIN)
    assert jobs.Worker(store).run_once()

    docs = store.list_responses(eid)
    echoed = [d for d in docs if d["model_name"] == "echo"]
    assert len(echoed) == 3 and all(d["response"] == "My key is *** and ***." for d in echoed)
    assert {d["model_name"] for d in docs if d.get("error")} == {"thief", "metadata"}
    console = "\n".join(e["message"] for e in store.list_events(eid))
    assert "api_key_env HF_TOKEN is not allowed" in console and "may not reach" in console
    # Only the bound key ever left the process, and only to its own endpoint.
    assert {r.headers.get("authorization") for r in server.requests} == {f"Bearer {TEAM_KEY}"}

    assert _found(_store_dump(paths.sqlite_path())) == []
    assert _found(_log_text(log_file)) == []
    frame = results.responses_frame(store, eid, include_text=True, include_failed_responses=True)
    exports = {
        "json": results.export_json(store, eid, tmp_path / "e.json", include_messages=True).read_text(),
        "csv": results.export_csv(frame, tmp_path / "e.csv").read_text(),
        "md": results.markdown_report(store, eid),
        "page csv": results_view.csv_bytes(results_view.responses_frame(docs)).decode(),
        "scores csv": scores_view.scores_csv(store, eid).decode(),
    }
    assert {name: _found(text) for name, text in exports.items()} == {name: [] for name in exports}

    # The pages, as a visitor sees them (the app would open MongoDB if secrets.toml named one).
    _secrets_toml(tmp_path, server, with_mongodb=False)
    monkeypatch.delenv("STORYBENCH_MONGODB_URI")
    seen = []
    for page, query in (
        ("app_pages/run.py", {"evaluation": eid}),
        ("app_pages/results.py", {"evaluation": eid}),
        ("app_pages/configure.py", {}),
    ):
        at = ui.open_app(page, query)
        seen.append(json.dumps([str(e) for e in [*at.main, *at.sidebar]]))
    assert "secrets nowhere" in seen[0]  # the pages did show the evaluation
    assert _found("".join(seen)) == []
