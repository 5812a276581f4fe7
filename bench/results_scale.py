"""How fast does the Results page's work grow with the data? (issues 4 and 15: under 2 s at 100k on SQLite)

Fills a temporary SQLite store through the Store protocol with synthetic
responses and one judgement each (10k, then 100k), then times what the Results
page computes for one evaluation: the scores frame, the response table's frame,
the leaderboard (1000-sample bootstrap), the chart aggregates (per criterion,
per sequence, score and length distributions as box statistics and binned
means) and the text metrics of the leaderboard. Each is timed twice in the same
run: through the store's flat projections and a bounded text sample (what the
page does), and, as the baseline, through list_responses / list_judgements
alone with every text read (what it did before). Prints each time, the ratio
baseline ÷ flat, the growth 100k / 10k, the CPU and the load average (the
times mean little on a busy machine without them).

    .venv/bin/python bench/results_scale.py            # 10k and 100k
    .venv/bin/python bench/results_scale.py --quick    # 10k only: a sanity run
    .venv/bin/python bench/results_scale.py --sizes 2000 20000 --words 120
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storybench_core import catalog, results
from storybench_core.runner import task_key
from storybench_core.store.sqlite import SQLiteStore
from storybench_core.views import results as results_view

MODELS = [f"model-{i}" for i in range(8)]
VOCAB = [
    "the",
    "a",
    "lantern",
    "river",
    "city",
    "archive",
    "signal",
    "winter",
    "glass",
    "engine",
    "whisper",
    "orchard",
    "border",
    "ferry",
    "memory",
    "storm",
    "clockwork",
    "harbour",
    "silence",
    "mirror",
    "desert",
    "courier",
    "relay",
    "ember",
    "she",
    "he",
    "walked",
    "said",
    "quietly",
    "under",
    "over",
    "door",
    "light",
    "dark",
    "morning",
    "letter",
    "road",
    "station",
    "dust",
    "salt",
    "wire",
]
BATCH = 1000


class DocumentsOnly:
    """A store seen without its flat projections, so the results package decodes whole documents (the baseline)."""

    HIDDEN = ("list_response_stats", "list_judgement_scores")

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name in self.HIDDEN:
            raise AttributeError(name)
        return getattr(self._store, name)


def synthetic_docs(
    eid: str, n: int, words: int, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """n responses spread over models × sequences × runs × 3 prompts, each with one judgement."""
    rng = random.Random(seed)
    rubric = catalog.load_rubric()
    sequences = [s.id for s in catalog.list_sequences()]
    per_run = len(MODELS) * len(sequences) * 3
    runs = -(-n // per_run)
    now = datetime.now(UTC)
    responses, judgements = [], []
    quality = {m: rng.uniform(2.0, 4.0) for m in MODELS}
    for run in range(1, runs + 1):
        for model in MODELS:
            for seq in sequences:
                for prompt in range(3):
                    if len(responses) >= n:
                        break
                    rid = f"r{len(responses):07d}"
                    length = max(10, int(rng.gauss(words, words / 3)))
                    text = " ".join(rng.choice(VOCAB) for _ in range(length))
                    tokens = int(length * 1.3)
                    seconds = tokens / rng.uniform(20, 60)
                    responses.append(
                        {
                            "id": rid,
                            "evaluation_id": eid,
                            "task_key": task_key(eid, model, seq, run, prompt),
                            "model_name": model,
                            "model_ref": {"kind": "fake"},
                            "sequence": seq,
                            "run": run,
                            "prompt_index": prompt,
                            "prompt_name": f"p{prompt}",
                            "prompt_text": "Write the next scene.",
                            "messages": [],
                            "response": text,
                            "words": length,
                            "finish_reason": "stop",
                            "prompt_tokens": 200,
                            "completion_tokens": tokens,
                            "generation_time_s": round(seconds, 3),
                            "tokens_per_s": round(tokens / seconds, 2),
                            "seed": 42 + run * 1000 + prompt,
                            "created_at": now,
                            "error": None,
                        }
                    )
                    failed = rng.random() < 0.01
                    scores = None
                    if not failed:
                        scores = {
                            c: {
                                "score": min(5, max(1, round(rng.gauss(quality[model], 0.8)))),
                                "justification": "The scene keeps its promise but leans on a familiar image.",
                            }
                            for c in rubric.criterion_ids
                        }
                    judgements.append(
                        {
                            "id": f"j{len(judgements):07d}",
                            "response_id": rid,
                            "evaluation_id": eid,
                            "judge_model": "judge-a",
                            "rubric_hash": rubric.rubric_hash,
                            "attempt": 1,
                            "scores": scores,
                            "overall": None
                            if failed
                            else sum(v["score"] for v in scores.values()) / len(scores),
                            "raw_output": "{...}" if failed else str(scores),
                            "created_at": now,
                            "error": "no valid judgement after 3 tries" if failed else None,
                            "structured_output": "json_schema",
                            "retries": 0,
                        }
                    )
    return responses, judgements


def fill(store: SQLiteStore, eid: str, n: int, words: int) -> float:
    """Insert through the Store protocol in batches (a bulk method is used when the store has one)."""
    responses, judgements = synthetic_docs(eid, n, words)
    store.create_evaluation({"id": eid, "name": f"scale {n}", "config": {}, "status": "completed"})
    start = time.perf_counter()
    bulk_r: Callable[..., Any] | None = getattr(store, "upsert_responses", None)
    bulk_j: Callable[..., Any] | None = getattr(store, "add_judgements", None)
    for i in range(0, n, BATCH):
        chunk_r, chunk_j = responses[i : i + BATCH], judgements[i : i + BATCH]
        if bulk_r is not None:
            bulk_r(chunk_r)
        else:
            for doc in chunk_r:
                store.upsert_response(doc)
        if bulk_j is not None:
            bulk_j(chunk_j)
        else:
            for doc in chunk_j:
                store.add_judgement(doc)
    return time.perf_counter() - start


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


TOTAL = "total (frame + leaderboard + charts)"
PAGE_TOTAL = "page total (+ table frame, text metrics)"
CHART_STEPS = ("per_criterion", "per_sequence", "score_distribution", "length_vs_score")


def chart_steps() -> dict[str, Callable[[Any], Any]]:
    """The chart aggregates the Results page draws from (boxes and bins, not points)."""
    return {
        "per_criterion": results.per_criterion,
        "per_sequence": results.per_sequence,
        "score_distribution": lambda df: results.box_stats(
            results.score_distribution(df), "overall", ["model_name"]
        ),
        "length_vs_score": lambda df: results.binned_means(
            results.length_vs_score(df), "words", "overall", "model_name"
        ),
    }


def table_frame(store: Any, eid: str, flat: bool) -> Any:
    """The response table's rows: the flat projection, or (baseline) every document with its text."""
    if flat:
        return results_view.response_stats(store, eid)
    return results_view.responses_frame(store.list_responses(eid, include_messages=False))


def text_metrics(store: Any, eid: str, df: Any, flat: bool) -> Any:
    """The leaderboard's text metrics: a bounded sample of conversations, or (baseline) every text."""
    if flat:
        return results.sample_text_metrics(store, eid, results.text_sample(df).conversations)
    return results.text_metrics_frame(results.responses_frame(store, eid, include_text=True))


def measure(store: Any, eid: str, repeats: int, flat: bool, with_texts: bool) -> dict[str, float]:
    """Best-of-`repeats` seconds for each step the Results page runs."""
    best: dict[str, float] = {}
    for _ in range(repeats):
        times: dict[str, float] = {}
        df, times["responses_frame"] = timed(lambda: results.responses_frame(store, eid))
        _, times["leaderboard"] = timed(lambda df=df: results.leaderboard(df))
        for name, step in chart_steps().items():
            _, times[name] = timed(lambda step=step, df=df: step(df))
        times[TOTAL] = times["responses_frame"] + times["leaderboard"] + sum(times[k] for k in CHART_STEPS)
        _, times["table frame"] = timed(lambda: table_frame(store, eid, flat))
        if with_texts:
            _, times["text metrics"] = timed(lambda df=df: text_metrics(store, eid, df, flat))
            times[PAGE_TOTAL] = times[TOTAL] + times["table frame"] + times["text metrics"]
        for key, value in times.items():
            best[key] = min(best.get(key, value), value)
    return best


BASELINE, FLAT = "baseline: Store protocol only, every text", "flat projections, text sample"
LABELS = (BASELINE, FLAT)


def load_average() -> str:
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def cpu_line() -> str:
    """'AMD EPYC, 2 CPUs, AVX-512' from /proc/cpuinfo (what these figures depend on)."""
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown CPU":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name}, {os.cpu_count()} CPUs, {simd}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--quick", action="store_true", help="only 10k responses (a sanity run)")
    parser.add_argument("--words", type=int, default=200, help="mean words per synthetic response")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--baseline-texts-up-to",
        type=int,
        default=10_000,
        help="measure the baseline's every-text metrics only up to this size (they take minutes at 100k)",
    )
    args = parser.parse_args()
    sizes = [10_000] if args.quick else args.sizes
    os.environ.setdefault("STORYBENCH_HOME", tempfile.mkdtemp(prefix="storybench-bench-home-"))
    print(f"{cpu_line()}, {load_average()}", flush=True)
    criteria = list(catalog.load_rubric().criterion_ids)
    rows: dict[tuple[int, str], dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="storybench-bench-") as tmp:
        for n in sizes:
            path = Path(tmp) / f"scale-{n}.db"
            eid = f"scale{n}"
            store = SQLiteStore(path)
            seconds = fill(store, eid, n, args.words)
            size_mb = path.stat().st_size / 1e6
            print(
                f"{n:>7} responses + judgements inserted in {seconds:.1f} s ({size_mb:.0f} MB file)",
                flush=True,
            )
            reads = {
                "list_responses": lambda s=store, e=eid: s.list_responses(e, include_messages=False),
                "list_judgements": lambda s=store, e=eid: s.list_judgements(e),
                "list_response_stats": lambda s=store, e=eid: s.list_response_stats(e),
                "list_judgement_scores": lambda s=store, e=eid: s.list_judgement_scores(e, criteria),
            }
            print("    store reads: " + ", ".join(f"{k} {timed(f)[1]:.3f} s" for k, f in reads.items()))
            for label, which in zip(LABELS, (DocumentsOnly(store), store), strict=True):
                flat = label == FLAT
                texts = flat or n <= args.baseline_texts_up_to
                rows[(n, label)] = measure(which, eid, args.repeats, flat, texts)
            print(f"  {'step':<42} {'baseline':>9} {'flat':>9} {'baseline ÷ flat':>16}")
            for step, value in rows[(n, FLAT)].items():
                base = rows[(n, BASELINE)].get(step)
                ratio = f"×{base / value:.1f}" if base is not None and value else "–"
                shown = f"{base:8.3f}s" if base is not None else f"{'–':>9}"
                print(f"  {step:<42} {shown} {value:8.3f}s {ratio:>16}", flush=True)
            store.close()
            print(f"    ({load_average()})", flush=True)
    big = sizes[-1]
    if len(sizes) >= 2:
        small = sizes[0]
        for label in LABELS:
            print(f"\ngrowth {big}/{small} (×{big / small:.0f} data), {label}:")
            for step, b in rows[(big, label)].items():
                a = rows[(small, label)].get(step)
                if a is not None:
                    print(f"    {step:<42} ×{b / a if a else float('nan'):.1f}")
    print()
    for label in LABELS:
        total = rows[(big, label)][TOTAL]
        print(
            f"{big} responses, {label}: {total:.2f} s for frame + leaderboard + chart frames (target < 2 s)"
        )
    if PAGE_TOTAL in rows[(big, FLAT)]:
        print(f"{big} responses, {FLAT}: {rows[(big, FLAT)][PAGE_TOTAL]:.2f} s for all the page computes")
    print(f"{cpu_line()}, {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
