"""Schema-constrained generation (the judge's JSON) on the bundled model, in one process.

Three ways to generate the same judgements (rubric schema, temperature 0,
the same prompts, each from an empty cache):

1. llama-cpp-python's `Llama` with a grammar (storybench's sequential `chat`):
   the grammar is checked against the whole vocabulary at every token;
2. the batch path one judgement at a time (`chat_batch` with one conversation):
   the sampled token is checked alone, and only a rejected one is re-sampled
   among the 1024 best-scored tokens (or the whole vocabulary when that is not
   exact) — backends/llama_batch.py;
3. the batch path, all judgements together.

Prints tokens/s for each and the ratio to (1). The texts of (2) and (3) are
checked equal to each other; (1) samples differently (grammar first), so its
texts may differ while still following the schema.

    .venv/bin/python bench/judge_grammar.py [--judgements 3] [--max-tokens 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judgements", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=300)
    args = ap.parse_args()

    from storybench_core import catalog, judge
    from storybench_core.backends.base import Completion, GenerationSettings
    from storybench_core.backends.llama import create_llama_backend
    from storybench_core.backends.llama_batch import decoder_for
    from storybench_core.config import GenerationSettingsConfig, ModelSpec

    backend = create_llama_backend(ModelSpec(kind="bundled"), GenerationSettingsConfig(n_ctx=4096))
    rubric = catalog.load_rubric()
    schema = judge.rubric_schema(rubric, judge.justification_max_chars(len(rubric.criteria), args.max_tokens))
    system = {"role": "system", "content": "You are a strict fiction editor. Answer with JSON only."}
    convs = [
        [
            system,
            {
                "role": "user",
                "content": f"Score this story on every criterion: 'Story {i}: the keeper saw the ship.'",
            },
        ]
        for i in range(args.judgements)
    ]

    def settings(i: int) -> GenerationSettings:
        return GenerationSettings(
            temperature=0.0, top_p=1.0, max_tokens=args.max_tokens, seed=i, json_schema=schema
        )

    rows: list[tuple[str, float, list[Completion]]] = []

    def timed(label: str, run: Callable[[], list[Completion]]) -> None:
        start = time.perf_counter()
        done = run()
        rows.append((label, time.perf_counter() - start, done))

    def sequential() -> list[Completion]:
        done = []
        for i, conv in enumerate(convs):
            backend._loaded().reset()
            done.append(backend.chat(conv, settings(i)))
        return done

    def batch_one_at_a_time() -> list[Completion]:
        done = []
        for i, conv in enumerate(convs):
            decoder_for(backend, 1).clear()
            done += backend.chat_batch([conv], [settings(i)])
        return done

    def batch_together() -> list[Completion]:
        decoder_for(backend, len(convs)).clear()
        return backend.chat_batch(convs, [settings(i) for i in range(len(convs))])

    timed("Llama + grammar, one at a time", sequential)
    timed("batch path, one at a time", batch_one_at_a_time)
    timed(f"batch path, {len(convs)} together", batch_together)
    backend.close()

    print(f"{args.judgements} judgements, rubric schema, temperature 0, max {args.max_tokens} tokens")
    base = None
    for label, seconds, done in rows:
        valid = all(isinstance(json.loads(c.text), dict) for c in done)
        tokens = sum(c.completion_tokens for c in done)
        speed = tokens / seconds
        base = base or speed
        print(
            f"  {label:<32} {tokens:5d} tokens {seconds:6.1f} s {speed:6.1f} tok/s  × {speed / base:4.2f}"
            f"  valid JSON: {valid}"
        )
    same = [c.text for c in rows[1][2]] == [c.text for c in rows[2][2]]
    print(f"batch path texts, one at a time == together: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
