"""How fast do the results frames build at scale? (issue 4; target: under 2 s at 100k on SQLite)

Fills a temporary SQLite store through the Store protocol with synthetic
responses and one judgement each (10k, then 100k), then times the reads and
frames the Results page needs: responses_frame, leaderboard (with a
1000-sample bootstrap), per-criterion, per-sequence, score distribution and
length-vs-score. Each is timed twice: through the store's flat projections
(list_response_stats, list_judgement_scores: what the Results page uses) and,
as the baseline, through list_responses / list_judgements alone. Prints each
time, the growth ratio 100k / 10k and the load average (the times mean little
on a busy machine without it).

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


def measure(store: SQLiteStore, eid: str, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` seconds for each step the Results page runs."""
    best: dict[str, float] = {}
    steps = {
        "leaderboard": results.leaderboard,
        "per_criterion": results.per_criterion,
        "per_sequence": results.per_sequence,
        "score_distribution": results.score_distribution,
        "length_vs_score": results.length_vs_score,
    }
    for _ in range(repeats):
        times: dict[str, float] = {}
        df, times["responses_frame"] = timed(lambda: results.responses_frame(store, eid))
        for name, step in steps.items():
            _, times[name] = timed(lambda step=step, df=df: step(df))
        times["total (frame + leaderboard + charts)"] = sum(
            times[k]
            for k in (
                "responses_frame",
                "leaderboard",
                "per_criterion",
                "per_sequence",
                "score_distribution",
                "length_vs_score",
            )
        )
        for key, value in times.items():
            best[key] = min(best.get(key, value), value)
    return best


LABELS = ("Store protocol only", "with flat projections")


def load_average() -> str:
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--quick", action="store_true", help="only 10k responses (a sanity run)")
    parser.add_argument("--words", type=int, default=200, help="mean words per synthetic response")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = [10_000] if args.quick else args.sizes
    os.environ.setdefault("STORYBENCH_HOME", tempfile.mkdtemp(prefix="storybench-bench-home-"))
    print(f"{os.cpu_count()} CPUs, {load_average()}", flush=True)
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
                key = (n, label)
                rows[key] = measure(which, eid, args.repeats)  # type: ignore[arg-type]
                print(f"  {label}:")
                for step, value in rows[key].items():
                    print(f"    {step:<40} {value:7.3f} s", flush=True)
            store.close()
            print(f"    ({load_average()})", flush=True)
    total_key = "total (frame + leaderboard + charts)"
    big = sizes[-1]
    if len(sizes) >= 2:
        small = sizes[0]
        for label in LABELS:
            print(f"\ngrowth {big}/{small} (×{big / small:.0f} data), {label}:")
            for step in rows[(big, label)]:
                a, b = rows[(small, label)][step], rows[(big, label)][step]
                print(f"    {step:<40} ×{b / a if a else float('nan'):.1f}")
    print()
    for label in LABELS:
        total = rows[(big, label)][total_key]
        print(
            f"{big} responses, {label}: {total:.2f} s for frame + leaderboard + chart frames (target < 2 s)"
        )
    print(f"{os.cpu_count()} CPUs, {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
