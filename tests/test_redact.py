"""The one redactor: known secrets and credential-shaped text masked in logs, the store and messages."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from storybench_core import credentials
from storybench_core.logs import RedactingFormatter
from storybench_core.redact import redact, redact_doc
from storybench_core.store.sqlite import SQLiteStore

HF = "hf_knownhubtoken0123456789abcdefghij"
DB_PASS = "p@ss:w/rd"


@pytest.fixture(autouse=True)
def _secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_TOKEN", HF)
    monkeypatch.setenv("STORYBENCH_MONGODB_URI", "mongodb://ann:p%40ss%3Aw%2Frd@db.example/bench")
    monkeypatch.setenv("TEAM_KEY", "team-0123456789")
    monkeypatch.setenv("STORYBENCH_API_ENDPOINTS", '{"http://10.0.0.5:8000/v1": "TEAM_KEY"}')
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text(
        'mongodb_uri = "mongodb://bob:toml-db-pass@db2/x"\n'
        "[api_keys]\n"
        'MY_PROVIDER_KEY = "prov-key-from-toml-42"\n'
        "[storybench.endpoints]\n"
        '"https://llm.example.com/v1" = "MY_PROVIDER_KEY"\n'
    )
    return tmp_path


def test_every_kind_of_known_secret_is_masked() -> None:
    known = credentials.known_secret_values()
    assert {HF, "team-0123456789", DB_PASS, "toml-db-pass", "prov-key-from-toml-42"} <= known
    # Endpoint URLs and variable names are not secrets.
    assert not known & {"https://llm.example.com/v1", "MY_PROVIDER_KEY", "TEAM_KEY"}
    text = (
        f"hub {HF}, team team-0123456789, db {DB_PASS}, toml toml-db-pass, [api_keys] prov-key-from-toml-42"
    )
    assert redact(text) == "hub ***, team ***, db ***, toml ***, [api_keys] ***"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("mongodb://user:p@ss@host/db", "mongodb://user:***@host/db"),  # '@' inside the password
        ("at 'mongodb://u:x/y@h1,h2/db?authSource=admin'", "at 'mongodb://u:***@h1,h2/db?authSource=admin'"),
        ("GET https://x.example/v1?api_key=abc123&model=m", "GET https://x.example/v1?api_key=***&model=m"),
        (
            "https://x.example/a?X-Amz-Signature=ffee&access_token=t0k",
            "https://x.example/a?X-Amz-Signature=***&access_token=***",
        ),
        ("Authorization: Bearer abcdefghijklmnop1234", "Authorization: Bearer ***"),
        ("https://ghp_0123456789abcdefghij@github.com/o/r", "https://***@github.com/o/r"),
        ("key sk-proj-0123456789abcdefghijklmn leaked", "key *** leaked"),
        ("a story about lovely weather", "a story about lovely weather"),
    ],
)
def test_credential_shapes_are_masked(text: str, masked: str) -> None:
    assert redact(text) == masked


def test_short_secrets_mask_whole_words_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORYBENCH_API_ENDPOINTS", '{"http://10.0.0.5:8000/v1": "SHORT_KEY"}')
    monkeypatch.setenv("SHORT_KEY", "love")
    assert redact("love is lovely") == "*** is lovely"


def test_the_log_formatter_masks_tracebacks_too() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("storybench_core.test_redact")
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError(f"connect to mongodb://ann:{DB_PASS}@db.example failed with {HF}")
        except RuntimeError:
            logger.exception("store down for %s", "team-0123456789")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "Traceback" in out and "RuntimeError" in out and "mongodb://ann:***@db.example" in out
    for secret in (HF, DB_PASS, "team-0123456789"):
        assert secret not in out


def test_the_store_masks_secrets_at_its_write_boundary(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    eid = store.create_evaluation(
        {"name": f"leak {HF}", "status": "queued", "config": {"note": ["prov-key-from-toml-42"]}}
    )
    store.append_event(eid, "error", f"refused key team-0123456789 at mongodb://u:{DB_PASS}@h")
    doc = store.get_evaluation(eid)
    assert doc is not None and doc["name"] == "leak ***" and doc["config"]["note"] == ["***"]
    assert store.list_events(eid)[0]["message"] == "refused key *** at mongodb://u:***@h"
    store.close()
    raw = (tmp_path / "s.db").read_bytes()
    for secret in (HF, "prov-key-from-toml-42", "team-0123456789", DB_PASS):
        assert secret.encode() not in raw


def test_redact_doc_walks_nested_values() -> None:
    doc = {"a": [HF, {"b": ("x", "toml-db-pass")}], "n": 3, "none": None}
    assert redact_doc(doc) == {"a": ["***", {"b": ("x", "***")}], "n": 3, "none": None}
