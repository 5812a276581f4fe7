"""Model output shown, exported and printed: no images, links, HTML, formulas or terminal escapes."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from storybench_core import paths, results
from storybench_core.cli import main
from storybench_core.store.sqlite import SQLiteStore
from storybench_core.text_safety import csv_safe, csv_safe_frame, safe_inline, safe_markdown, terminal_safe
from storybench_core.views import results as results_view

HOSTILE = (
    "Chapter one ![pixel](https://tracker.example/p.png?u=1) then [click me](https://evil.example) "
    "<img src=x onerror=alert(1)> <b>bold</b> :red[SYSTEM: you won] :material/verified: $x^2$ "
    "visit www.evil.example or mail a@evil.example or https://evil.example/raw\n"
    "[ref]: https://evil.example/ref\n![also][ref] *kept emphasis*"
)
# What Markdown (and Streamlit's directives) would act on, in the text handed to st.markdown.
ACTIVE = re.compile(r"!?\[|\]\(|<[a-z/!]|https?://|www\.|:red\[|:material/|\$x|\w@\w", re.I)


def test_safe_markdown_leaves_nothing_that_loads_links_or_fakes_ui() -> None:
    shown = safe_markdown(HOSTILE)
    assert ACTIVE.search(shown) is None, shown
    # The words stay readable, and ordinary Markdown still works.
    assert "Chapter one pixel then click me" in shown and "*kept emphasis*" in shown
    assert safe_markdown("") == "" and safe_markdown(None) == ""


def test_safe_inline_is_plain_text_on_one_line() -> None:
    shown = safe_inline("**Winner** # [x](http://e)\n`code` | ![i](http://e/i.png)")
    assert "\n" not in shown and not re.search(r"[*#`|\[\]]", shown.replace("&#", "")), shown
    assert ACTIVE.search(shown) is None


@pytest.mark.parametrize("cell", ['=HYPERLINK("http://e")', "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"])
def test_formula_cells_get_an_apostrophe(cell: str) -> None:
    assert csv_safe(cell) == "'" + cell
    assert csv_safe("plain") == "plain" and csv_safe(-2) == -2 and csv_safe(None) is None


def test_csv_exports_never_start_a_cell_with_a_formula(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"model_name": ["=cmd|' /C calc'!A0", "ok"], "response": ["@x", "-y"], "score": [-1.5, 2]}
    )
    for data in (
        csv_safe_frame(frame).to_csv(index=False),
        results.csv_bytes(frame).decode(),
        results.export_csv(frame, tmp_path / "x.csv").read_text(),
        results_view.csv_bytes(frame.assign(preview="")).decode(),
    ):
        rows = list(csv.reader(io.StringIO(data)))
        assert all(not c.startswith(("=", "+", "-", "@")) or _number(c) for row in rows for c in row), rows
        assert rows[1][0].startswith("'=") and rows[1][2] == "-1.5"  # numbers stay numbers


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_terminal_safe_strips_escape_sequences() -> None:
    text = "ok\x1b[2J\x1b[31mred\x1b[0m\x1b]0;pwned title\x07 \x1b]8;;http://e\x1b\\link\x1b]8;;\x1b\\ \x9b2J\x07end\nnext\tcol"
    assert terminal_safe(text) == "okred link end\nnext\tcol"


def test_the_cli_prints_model_text_without_control_sequences(capsys: pytest.CaptureFixture[str]) -> None:
    store = SQLiteStore(paths.sqlite_path())
    eid = store.create_evaluation({"name": "evil\x1b]0;title\x07", "status": "completed", "config": {}})
    store.upsert_response(
        {
            "evaluation_id": eid,
            "task_key": f"{eid}/m/film/1/0",
            "model_name": "m\x1b[31m",
            "sequence": "film",
            "run": 1,
            "prompt_index": 0,
            "response": "=cmd()\x1b[2J\x1b]8;;http://e\x1b\\x\x9b31m",
            "created_at": datetime.now(UTC),
        }
    )
    store.close()
    for fmt in ("table", "csv", "json"):
        assert main(["results", "--evaluation", eid, "--format", fmt]) == 0
        out = capsys.readouterr().out
        # No control character but newlines (CSV lines end in CR LF) and tabs.
        assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", out), (fmt, out)
        if fmt == "csv":
            assert "'=cmd()" in out
        if fmt == "json":
            assert json.loads(out)[0]["response"].startswith("=cmd()\x1b")  # JSON escapes it: \u001b
