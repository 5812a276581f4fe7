"""Storybench's runner overhead against a bare llama-cpp-python loop, in one process.

Both sides generate the same prompts with the same token budget on the bundled
model at temperature 0 (so they produce the same tokens):

  (a) bare:   llama_cpp.Llama.create_completion over the exact prompt texts the
              runner sent (each turn's conversation, formatted the same way);
  (b) runner: storybench's Runner with a real SQLite store (events, progress,
              upserts, context fitting included), sequential path.

Prints tok/s for both and the ratio runner/bare (target ≥ 0.95), then the
prompt tokens llama.cpp actually evaluated per turn of each 3-turn
conversation against the tokens sent (prefix reuse).

    .venv/bin/python bench/throughput.py [--max-tokens 64] [--sequences film,thriller] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from storybench_core.access import LOCAL_ADMIN


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--sequences", default="film,thriller")
    ap.add_argument(
        "--repeat", type=int, default=2, help="alternate bare/runner this many times; best of each"
    )
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    os.environ.setdefault("STORYBENCH_HOME", tempfile.mkdtemp(prefix="sb-bench-"))
    from llama_cpp import Llama

    from storybench_core.backends.llama import format_prompt
    from storybench_core.bundled import ensure_bundled_model
    from storybench_core.config import parse_config
    from storybench_core.jobs import enqueue, get_evaluation
    from storybench_core.runner import ModelPool, Runner
    from storybench_core.store.sqlite import SQLiteStore

    model_path = ensure_bundled_model()
    options = {"n_threads": args.threads} if args.threads else {}
    config = parse_config(
        {
            "models": [{"kind": "bundled", "options": options}],
            "sequences": [s for s in args.sequences.split(",") if s],
            "generation": {
                "temperature": 0.0,
                "max_tokens": args.max_tokens,
                "runs": 1,
                "n_ctx": 4096,
                "parallel_runs": 1,
            },
        }
    )
    store = SQLiteStore(Path(os.environ["STORYBENCH_HOME"]) / "bench.db")
    pool = ModelPool()
    backend, _ = pool.get(config.models[0], config.generation)  # loaded once, outside the timings
    n_threads = args.threads or backend._llm.n_threads  # type: ignore[attr-defined]
    bare = Llama(str(model_path), n_ctx=4096, n_threads=n_threads, verbose=False)

    def run_storybench() -> tuple[float, int, list[dict]]:
        eid = enqueue(store, config, LOCAL_ADMIN)
        start = time.perf_counter()
        Runner(store, pool).execute(get_evaluation(store, eid), config)
        elapsed = time.perf_counter() - start
        docs = store.list_responses(eid)
        return elapsed, sum(d["completion_tokens"] for d in docs), docs

    def run_bare(prompts: list[str]) -> tuple[float, int]:
        tokens = 0
        start = time.perf_counter()
        for prompt in prompts:
            out = bare.create_completion(
                prompt,
                max_tokens=args.max_tokens,
                temperature=0.0,
                stop=list(backend.template.stop) or None,  # type: ignore[attr-defined]
            )
            tokens += out["usage"]["completion_tokens"]
        return time.perf_counter() - start, tokens

    # One warm-up pass of the runner gives the exact prompts both sides use.
    _, _, docs = run_storybench()
    prompts = [format_prompt(d["messages"], backend.template) for d in docs]  # type: ignore[attr-defined]
    runner_rates, bare_rates = [], []
    for _ in range(args.repeat):
        t, n = run_bare(prompts)
        bare_rates.append(n / t)
        t, n, docs = run_storybench()
        runner_rates.append(n / t)

    best_bare, best_runner = max(bare_rates), max(runner_rates)
    print(f"bundled model, {len(prompts)} responses × {args.max_tokens} max tokens, {n_threads} threads")
    print(f"  bare llama-cpp-python loop : {best_bare:6.1f} tok/s  (runs: {_fmt(bare_rates)})")
    print(f"  storybench runner + SQLite : {best_runner:6.1f} tok/s  (runs: {_fmt(runner_rates)})")
    print(f"  ratio runner / bare        : {best_runner / best_bare:6.3f}  (target ≥ 0.95)")
    print(
        f"  median ratio               : {statistics.median(runner_rates) / statistics.median(bare_rates):6.3f}"
    )
    print()
    print("prefix reuse (last runner pass): prompt tokens sent vs evaluated per turn")
    for seq in sorted({d["sequence"] for d in docs}):
        turns = [d for d in docs if d["sequence"] == seq]
        sent = sum(d["prompt_tokens"] for d in turns)
        evaluated = sum(d["prompt_tokens_evaluated"] or 0 for d in turns)
        # New tokens per turn: what was not in the previous turn's prompt + answer.
        new = [turns[0]["prompt_tokens"]] + [
            turns[i]["prompt_tokens"] - turns[i - 1]["prompt_tokens"] - turns[i - 1]["completion_tokens"]
            for i in range(1, len(turns))
        ]
        detail = ", ".join(
            f"turn {d['prompt_index'] + 1}: {d['prompt_tokens']} sent / {d['prompt_tokens_evaluated']} evaluated"
            f" / {n} new"
            for d, n in zip(turns, new, strict=True)
        )
        print(f"  {seq}: {detail}")
        print(f"  {seq}: evaluated {evaluated} of {sent} sent; sum of new-turn tokens {sum(new)}")
    pool.release()
    store.close()
    return 0


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
