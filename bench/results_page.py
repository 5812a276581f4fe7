"""How long does the Results page take in a real browser for one large evaluation? (issue 15)

For each size (a small baseline, default 1k responses, then the large one,
default 100k) it seeds a fresh SQLite store in a temporary STORYBENCH_HOME
with one evaluation of that many responses, one judgement each (the synthetic
data of bench/results_scale.py, written through the store), starts the real
Storybench server on a free loopback port (tests/ui/servers.py) and drives
Debian's headless chromium with Playwright: opens the Results page on that
evaluation and times

  first run      until the script has finished and the response count shows;
  leaderboard    from opening the page until the leaderboard table is drawn
                 (its tab clicked as soon as the tabs exist);
  <tab>          clicking each tab until its content is drawn;
  next page      the response table's page 2, until its caption changes;
  second visit   a new tab opening the page while the server's caches are warm;

then prints one table with the baseline, the large size and their ratio, the
browser's JavaScript heap, the CPU and the load average.

    .venv/bin/python bench/results_page.py                        # 1k, then 100k
    .venv/bin/python bench/results_page.py --responses 20000 --baseline 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results_scale import BATCH, MODELS, cpu_line, load_average, synthetic_docs  # noqa: E402

from storybench_core import catalog  # noqa: E402
from storybench_core.config import config_to_dict, parse_config  # noqa: E402
from storybench_core.store.sqlite import SQLiteStore  # noqa: E402
from tests.ui.servers import chromium, new_tab, storybench_server  # noqa: E402

TIMEOUT_MS = 600_000  # a page that never finishes is reported as such, not waited on forever
LIMITS = {"STORYBENCH_MAX_TASKS": "10000000"}  # the stored evaluation is larger than a config may ask for


def seed(home: Path, n: int, words: int) -> tuple[str, float]:
    """One completed evaluation of n responses (one judgement each) in home's SQLite store."""
    os.environ.update(LIMITS)
    eid = f"page{n}"
    responses, judgements = synthetic_docs(eid, n, words)
    config = parse_config(
        {
            "name": f"results page {n}",
            "models": [{"kind": "bundled", "name": m} for m in MODELS],
            "sequences": [s.id for s in catalog.list_sequences()],
            "generation": {"runs": 100},
        }
    )
    store = SQLiteStore(home / "storybench.db")
    start = time.perf_counter()
    store.create_evaluation(
        {
            "id": eid,
            "name": f"results page {n}",
            "config": config_to_dict(config),
            "status": "completed",
            "total_tasks": n,
            "completed_tasks": n,
            "failed_tasks": 0,
        }
    )
    for i in range(0, n, BATCH):
        for doc in responses[i : i + BATCH]:
            store.upsert_response(doc)
        for doc in judgements[i : i + BATCH]:
            store.add_judgement(doc)
    store.close()
    return eid, time.perf_counter() - start


def painted(page: Any) -> None:
    """Wait two animation frames: what the DOM holds has been drawn."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def script_done(page: Any) -> None:
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"stApp\"]') && !document.querySelector("
        '\'[data-testid="stStatusWidget"] [data-testid="stStatusWidgetRunningIcon"]\')',
        timeout=TIMEOUT_MS,
    )


def timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    try:
        action()
    except Exception as exc:  # a timeout: report it in the table
        print(f"      ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})", flush=True)
        return float("nan")
    return time.perf_counter() - start


def panel(page: Any) -> Any:
    """The tab panel on screen."""
    return page.locator("[role='tabpanel']:visible")


def measure(url: str, eid: str, n: int) -> dict[str, float]:
    """Seconds for each step in one fresh browser tab, plus the tab's JavaScript heap in MB."""
    out: dict[str, float] = {}
    target = f"{url}/results?evaluation={eid}"
    with chromium() as browser:
        # Warm the server (imports, the worker, first-session work) with a first visit of its own.
        warm = new_tab(browser)
        warm.goto(url)
        script_done(warm)
        warm.close()

        page = new_tab(browser)
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        start = time.perf_counter()

        def leaderboard() -> None:
            page.goto(target)
            page.get_by_role("tab", name="Leaderboard").click()
            panel(page).get_by_text("Overall: the mean of the criteria").wait_for()
            panel(page).locator("[data-testid='stDataFrame']").first.wait_for()
            painted(page)

        out["leaderboard (page opened)"] = timed(leaderboard)

        def first_run() -> None:
            script_done(page)
            count = page.locator("[data-testid='stMetric']", has_text="Responses")
            shown = count.locator("[data-testid='stMetricValue']").inner_text()
            if shown.strip() != str(n):
                raise RuntimeError(f"the page shows {shown} responses, not {n}")

        timed(first_run)
        out["first run (page opened)"] = time.perf_counter() - start

        def tab(name: str, ready: Callable[[], None]) -> None:
            def action() -> None:
                page.get_by_role("tab", name=name).click()
                ready()
                painted(page)

            out[f"tab {name}"] = timed(action)

        tab("Responses", lambda: panel(page).locator("[data-testid='stDataFrame']").first.wait_for())
        tab(
            "Charts",
            lambda: page.wait_for_function(
                "() => [...document.querySelectorAll('[role=tabpanel]')].some(p => p.offsetParent !== null"
                " && p.querySelectorAll('.js-plotly-plot .main-svg').length >= 8)",
                timeout=TIMEOUT_MS,
            ),
        )
        tab("Leaderboard", lambda: panel(page).locator("[data-testid='stDataFrame']").first.wait_for())
        tab("Compare", lambda: panel(page).get_by_text("Overall").first.wait_for())
        tab("Export", lambda: panel(page).get_by_role("button", name="Report (Markdown)").wait_for())

        def next_page() -> None:
            page.get_by_role("tab", name="Responses").click()
            field = panel(page).get_by_label("Page", exact=True)
            field.fill("2")
            field.press("Enter")
            panel(page).get_by_text("(page 2 of").wait_for()
            script_done(page)
            painted(page)

        out["next page of responses"] = timed(next_page)
        heap = page.evaluate("() => performance.memory ? performance.memory.usedJSHeapSize : 0")
        out["JS heap (MB)"] = heap / 1e6
        if errors:
            print(f"      page errors: {errors[:3]}", flush=True)

        # A second visitor while the server's caches hold this evaluation's frames.
        again = new_tab(browser)
        again.set_default_timeout(TIMEOUT_MS)

        def second_visit() -> None:
            again.goto(target)
            again.get_by_role("tab", name="Leaderboard").click()
            panel(again).get_by_text("Overall: the mean of the criteria").wait_for()
            panel(again).locator("[data-testid='stDataFrame']").first.wait_for()
            painted(again)

        out["leaderboard (second visit)"] = timed(second_visit)
    return out


def run_size(n: int, words: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="storybench-page-bench-") as tmp:
        home = Path(tmp)
        eid, seconds = seed(home, n, words)
        print(f"{n:>7} responses + judgements seeded in {seconds:.1f} s", flush=True)
        with storybench_server(home, f"results-page-{n}", env=LIMITS) as server:
            figures = measure(server.url, eid, n)
    for step, value in figures.items():
        print(f"    {step:<30} {value:8.2f}", flush=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--responses", type=int, default=100_000, help="responses in the large evaluation")
    parser.add_argument("--baseline", type=int, default=1_000, help="responses in the baseline evaluation")
    parser.add_argument("--words", type=int, default=200, help="mean words per synthetic response")
    args = parser.parse_args()
    os.environ.setdefault("STORYBENCH_HOME", tempfile.mkdtemp(prefix="storybench-bench-home-"))
    print(f"{cpu_line()}, {load_average()}", flush=True)
    small = run_size(args.baseline, args.words)
    large = run_size(args.responses, args.words)
    print(f"\n{'seconds (heap: MB)':<30} {args.baseline:>10,} {args.responses:>10,} {'ratio':>8}")
    for step, base in small.items():
        value = large.get(step, float("nan"))
        ratio = value / base if base == base and base else float("nan")
        print(f"{step:<30} {base:>10.2f} {value:>10.2f} {'×' + format(ratio, '.1f'):>8}")
    print(f"{cpu_line()}, {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
