"""Batched vs sequential generation on the bundled model (issue 8), in one command.

The same evaluation — one sequence, 3 turns, `runs` = each width, a fixed
budget of new tokens per turn — goes through storybench's Runner twice: with
`parallel_runs = 1` (the sequential path: one conversation after another on
llama-cpp-python's `Llama`) and with `parallel_runs = runs` (the batched path:
turn k of every run in one llama.cpp batch, backends/llama_batch.py). Both
paths sample the same tokens (same seeds, same numbers), so the work is the
same; by default the end-of-generation token and the transcript's stop
markers are ignored so every response is exactly --max-tokens long
(--natural-stops keeps them). Each figure is the best of --repeat runs,
alternating the paths, each starting from an empty KV cache.

Printed: aggregate tokens/s (all new tokens ÷ wall time, prompt processing
included) per width and path, the ratio batched/sequential, and the prompt
tokens sent vs evaluated per turn (prefix reuse).

--server URL sends the same evaluation to an OpenAI-compatible server
(storybench's API backend, the runs of a turn sent concurrently, then one
after another) for a side-by-side figure; --start-server starts
llama-cpp-python's own server (`python -m llama_cpp.server`) on a free
loopback port for it. That server runs one request at a time, so its
"concurrent" figure is a queue, not llama.cpp's parallel slots.
--llama-server PATH starts llama.cpp's own `llama-server` (built from the
installed llama-cpp-python's sources by bench/llama_server.sh) with one slot
per run (`-np`), the target the batched path is measured against.

    .venv/bin/python bench/batched.py [--widths 1,2,3,4,8] [--max-tokens 64] [--repeat 2]
    .venv/bin/python bench/batched.py --widths 3 --llama-server "$(bash bench/llama_server.sh)"
    .venv/bin/python bench/batched.py --widths 3 --start-server
    .venv/bin/python bench/batched.py --widths 3 --server http://127.0.0.1:8080/v1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from storybench_core.access import LOCAL_ADMIN

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@dataclasses.dataclass
class Measurement:
    """One evaluation's wall time, tokens and per-turn prompt accounting."""

    wall_s: float
    completion_tokens: int
    responses: int
    prompt_sent: dict[int, int]
    prompt_evaluated: dict[int, int | None]
    batch_widths: set[Any]
    texts: dict[tuple[int, int], str] = dataclasses.field(default_factory=dict)  # (run, prompt) -> text

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s else 0.0


@contextmanager
def eos_ignored() -> Iterator[None]:
    """Treat no token as end-of-generation, in both paths (a fixed budget per response)."""
    import llama_cpp
    import llama_cpp.llama_cpp as low

    saved = (llama_cpp.llama_vocab_is_eog, low.llama_vocab_is_eog)

    def never(vocab: Any, token: int) -> bool:
        return False

    llama_cpp.llama_vocab_is_eog = never  # type: ignore[assignment]
    low.llama_vocab_is_eog = never  # type: ignore[assignment]
    try:
        yield
    finally:
        llama_cpp.llama_vocab_is_eog, low.llama_vocab_is_eog = saved


def make_config(runs: int, parallel_runs: int, args: argparse.Namespace, model: dict[str, Any]) -> Any:
    from storybench_core.config import parse_config

    return parse_config(
        {
            "name": f"bench runs={runs} parallel_runs={parallel_runs}",
            "models": [model],
            "sequences": [args.sequence],
            "generation": {
                "runs": runs,
                "parallel_runs": parallel_runs,
                "max_tokens": args.max_tokens,
                "n_ctx": args.n_ctx,
                "temperature": args.temperature,
                "seed": 42,
            },
        }
    )


def measure(store: Any, config: Any, backend: Any, before: Callable[[], None] = lambda: None) -> Measurement:
    """Run one evaluation through the Runner on an already loaded backend."""
    from storybench_core.jobs import enqueue, get_evaluation
    from storybench_core.runner import ModelPool, RunHooks, Runner

    errors: list[str] = []
    hooks = RunHooks(event=lambda level, msg, **_: errors.append(msg) if level == "error" else None)
    eid = enqueue(store, config, LOCAL_ADMIN)
    before()
    start = time.perf_counter()
    summary = Runner(store, ModelPool(lambda spec, gen: backend), hooks).execute(
        get_evaluation(store, eid), config
    )
    wall = time.perf_counter() - start
    if summary.failed:
        raise SystemExit(f"{summary.failed} task(s) failed: {errors[:3]}")
    docs = store.list_responses(eid)
    sent: dict[int, int] = {}
    evaluated: dict[int, int | None] = {}
    for d in docs:
        turn = d["prompt_index"] + 1
        sent[turn] = sent.get(turn, 0) + int(d["prompt_tokens"] or 0)
        value = d.get("prompt_tokens_evaluated")
        evaluated[turn] = (
            None if value is None or evaluated.get(turn, 0) is None else evaluated.get(turn, 0) + value
        )
    return Measurement(
        wall,
        sum(int(d["completion_tokens"] or 0) for d in docs),
        len(docs),
        sent,
        evaluated,
        {d.get("batch_width") for d in docs},
        {(d["run"], d["prompt_index"]): d["response"] for d in docs},
    )


def best(a: Measurement | None, b: Measurement) -> Measurement:
    return b if a is None or b.tokens_per_s > a.tokens_per_s else a


def local_rows(args: argparse.Namespace, store: Any) -> list[dict[str, Any]]:
    from storybench_core.backends.llama import create_llama_backend
    from storybench_core.backends.llama_batch import decoder_for
    from storybench_core.config import GenerationSettingsConfig, ModelSpec

    options: dict[str, Any] = {"n_threads": args.threads} if args.threads else {}
    if args.flash_attn:
        options["flash_attn"] = True
    model = {"kind": "bundled", "options": options}
    backend = create_llama_backend(ModelSpec(**model), GenerationSettingsConfig(n_ctx=args.n_ctx))
    print(f"model: {backend.name} — {backend.load_note}")
    if not args.natural_stops:
        backend.template = dataclasses.replace(backend.template, stop=())

    rows = []
    try:
        for width in args.widths:

            def cold(width: int = width) -> None:
                """Both paths start from empty KV caches: the first prompt is evaluated in full."""
                backend._loaded().reset()
                decoder_for(backend, width).clear()

            seq: Measurement | None = None
            bat: Measurement | None = None
            for _ in range(args.repeat):
                seq = best(seq, measure(store, make_config(width, 1, args, model), backend, cold))
                bat = best(bat, measure(store, make_config(width, width, args, model), backend, cold))
            assert seq is not None and bat is not None
            if seq.completion_tokens != bat.completion_tokens:
                print(f"note: width {width}: {seq.completion_tokens} vs {bat.completion_tokens} tokens")
            # Same seeds and numbers: both paths must have written the same texts.
            same = sum(bat.texts.get(key) == text for key, text in seq.texts.items())
            rows.append({"width": width, "sequential": seq, "batched": bat, "same": (same, len(seq.texts))})
            print(
                f"  width {width}: sequential {seq.tokens_per_s:6.1f} tok/s, batched {bat.tokens_per_s:6.1f} tok/s "
                f"(× {bat.tokens_per_s / seq.tokens_per_s:.2f}), {bat.completion_tokens} tokens each, "
                f"same texts {same}/{len(seq.texts)}",
                flush=True,
            )
    finally:
        backend.close()
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def llama_cpp_server(args: argparse.Namespace) -> Iterator[str]:
    """llama-cpp-python's server on a free loopback port; yields its /v1 URL."""
    from storybench_core.bundled import ensure_bundled_model

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(ensure_bundled_model()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(args.n_ctx),
        "--model_alias",
        "bundled",
    ]
    # The same threads as storybench's backend (the server's default is half the logical CPUs).
    from storybench_core.hardware import hardware_snapshot

    snapshot = hardware_snapshot(cpu_sample_s=0)
    threads = str(args.threads or snapshot.cpu_count_physical or os.cpu_count() or 1)
    command += ["--n_threads", threads, "--n_threads_batch", threads]
    command += ["--flash_attn", "true" if args.flash_attn else "false"]
    yield from _serve(command, port, "llama_cpp.server")


@contextmanager
def llama_server_binary(args: argparse.Namespace) -> Iterator[str]:
    """llama.cpp's llama-server with one slot per run of the widest width, on a free loopback port.

    Each slot gets n_ctx tokens, the threads match storybench's, and --swa-full gives it the
    same full sliding-window cache storybench uses (without it Gemma 3's cached prefixes
    cannot be reused and every turn would re-process the whole conversation).
    """
    from storybench_core.bundled import ensure_bundled_model
    from storybench_core.hardware import hardware_snapshot

    slots = max(args.widths)
    threads = str(args.threads or hardware_snapshot(cpu_sample_s=0).cpu_count_physical or os.cpu_count() or 1)
    port = free_port()
    command = [
        args.llama_server,
        "-m", str(ensure_bundled_model()),
        "--host", "127.0.0.1",
        "--port", str(port),
        "-np", str(slots),
        "-c", str(args.n_ctx * slots),
        "-t", threads,
        "-tb", threads,
        "--swa-full",
        "--alias", "bundled",
    ]  # fmt: skip
    command += ["-fa", "on" if args.flash_attn else "off"]
    yield from _serve(command, port, "llama-server")


def _serve(command: list[str], port: int, label: str) -> Iterator[str]:
    """Start a server process, wait until /v1/models answers, yield its URL, stop it."""
    log_path = Path(tempfile.gettempdir()) / f"storybench-bench-server-{port}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as reply:
                    json.load(reply)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{label} did not start; see {log_path}") from None
                time.sleep(0.5)
        print(f"started {label} at {url} (log: {log_path})")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def server_rows(args: argparse.Namespace, store: Any, url: str) -> list[dict[str, Any]]:
    from storybench_core.backends.openai_compat import OpenAIBackend, list_endpoint_models
    from storybench_core.config import GenerationSettingsConfig, ModelSpec

    probe = ModelSpec(kind="api", name="server", base_url=url, api_model="x")
    api_model = args.server_model or list_endpoint_models(probe)[0]
    rows = []
    for width in args.widths:
        # ignore_eos (llama-server) and min_tokens (llama-cpp-python's server): a fixed budget too.
        extra = {} if args.natural_stops else {"ignore_eos": True, "min_tokens": args.max_tokens}
        model = {
            "kind": "api",
            "name": "server",
            "base_url": url,
            "api_model": api_model,
            "max_concurrency": width,
            "timeout_s": 600,
            "options": {"n_ctx": args.n_ctx, "extra_body": extra},
        }
        backend = OpenAIBackend(ModelSpec(**model), GenerationSettingsConfig(n_ctx=args.n_ctx))
        seq: Measurement | None = None
        con: Measurement | None = None
        for _ in range(args.repeat):
            seq = best(seq, measure(store, make_config(width, 1, args, model), backend))
            con = best(con, measure(store, make_config(width, width, args, model), backend))
        assert seq is not None and con is not None
        rows.append({"width": width, "sequential": seq, "batched": con})
        print(
            f"  width {width}: one at a time {seq.tokens_per_s:6.1f} tok/s, concurrent {con.tokens_per_s:6.1f} tok/s",
            flush=True,
        )
        backend.close()
    return rows


def print_table(title: str, rows: list[dict[str, Any]], batched_label: str) -> None:
    print(f"\n{title}")
    print(
        f"{'runs':>4}  {'sequential tok/s':>16}  {batched_label + ' tok/s':>16}  {'ratio':>6}  {'tokens':>6}  "
        f"{'wall s (seq/batch)':>18}  same texts"
    )
    for row in rows:
        s, b = row["sequential"], row["batched"]
        same = "{}/{}".format(*row["same"]) if "same" in row else "n/a"
        print(
            f"{row['width']:>4}  {s.tokens_per_s:>16.1f}  {b.tokens_per_s:>16.1f}  "
            f"{b.tokens_per_s / s.tokens_per_s:>6.2f}  {b.completion_tokens:>6}  "
            f"{s.wall_s:>8.2f} / {b.wall_s:<8.2f}  {same}"
        )


def print_prefix_reuse(rows: list[dict[str, Any]]) -> None:
    print("\nprompt tokens per turn, all runs together: sent / evaluated sequential / evaluated batched")
    for row in rows:
        s, b = row["sequential"], row["batched"]
        cells = []
        for turn in sorted(b.prompt_sent):
            cells.append(
                f"turn {turn}: {b.prompt_sent[turn]} / {s.prompt_evaluated.get(turn)} / {b.prompt_evaluated.get(turn)}"
            )
        print(f"  runs {row['width']}: " + "; ".join(cells))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="1,2,3,4,8", help="comma-separated run counts (default 1,2,3,4,8)")
    ap.add_argument("--max-tokens", type=int, default=64, help="new tokens per response (default 64)")
    ap.add_argument("--sequence", default="film", help="catalog sequence (3 turns)")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: physical cores)")
    ap.add_argument(
        "--repeat", type=int, default=2, help="measure each figure this many times; keep the best"
    )
    ap.add_argument(
        "--flash-attn",
        action="store_true",
        help="load with flash attention (both paths; storybench's default is off, see llama.py)",
    )
    ap.add_argument("--natural-stops", action="store_true", help="stop at EOS / stop markers (unequal work)")
    ap.add_argument("--server", default=None, help="an OpenAI-compatible /v1 URL to compare against")
    ap.add_argument("--server-model", default=None, help="model id at --server (default: the first listed)")
    ap.add_argument(
        "--start-server", action="store_true", help="start llama-cpp-python's server for --server"
    )
    ap.add_argument(
        "--llama-server",
        default=None,
        metavar="PATH",
        help="start this llama-server binary (bench/llama_server.sh builds one) with -np = the widest run count",
    )
    ap.add_argument("--skip-local", action="store_true", help="only the server figures")
    args = ap.parse_args()
    args.widths = [int(w) for w in args.widths.split(",") if w.strip()]
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    busy_before = cpu_pressure()

    os.environ.setdefault("STORYBENCH_HOME", tempfile.mkdtemp(prefix="sb-bench-batched-"))
    from storybench_core.store.sqlite import SQLiteStore

    store = SQLiteStore(Path(os.environ["STORYBENCH_HOME"]) / "bench.db")
    budget = "EOS and stop markers ignored" if not args.natural_stops else "natural stops"
    print(
        f"work: sequence '{args.sequence}', 3 turns, runs = {args.widths}, {args.max_tokens} new tokens per "
        f"response ({budget}), temperature {args.temperature}, n_ctx {args.n_ctx}; best of {args.repeat}"
        + ("; flash attention on" if args.flash_attn else "; flash attention off")
    )
    local: list[dict[str, Any]] = []
    if not args.skip_local:
        with eos_ignored() if not args.natural_stops else _nothing():
            local = local_rows(args, store)
        print_table(
            "local model: sequential (parallel_runs 1) vs batched (parallel_runs = runs)", local, "batched"
        )
        print_prefix_reuse(local)
    if args.server or args.start_server or args.llama_server:
        if args.llama_server:
            starter = llama_server_binary(args)
        elif args.start_server:
            starter = llama_cpp_server(args)
        else:
            starter = _given(args.server)
        with starter as url:
            remote = server_rows(args, store, url)
        if args.llama_server:
            note = f"llama.cpp's llama-server -np {max(args.widths)}, continuous batching"
        elif args.start_server:
            note = "llama-cpp-python's server answers one request at a time: 'concurrent' is a queue here"
        else:
            note = f"server at {url}"
        print_table(f"OpenAI-compatible server ({note})", remote, "concurrent")
        if local:
            print("\nside by side, aggregate tok/s (same sequence, turns, runs and token budget):")
            for lrow, rrow in zip(local, remote, strict=False):
                ours, theirs = lrow["batched"].tokens_per_s, rrow["batched"].tokens_per_s
                print(
                    f"  runs {lrow['width']}: storybench batched {ours:.1f} vs server concurrent {theirs:.1f} (× {ours / theirs:.2f})"
                )
    store.close()
    busy = max(busy_before or 0.0, cpu_pressure() or 0.0)
    if busy > 20:
        print(
            f"\nwarning: other processes competed for the CPU (/proc/pressure/cpu some avg60 up to {busy:.0f}%); "
            "llama.cpp's threads slow down sharply when they are not alone — rerun on an idle machine"
        )
    return 0


def cpu_pressure() -> float | None:
    """Share of the last minute in which some task waited for a CPU (Linux PSI), or None."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(line.split("avg60=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url.rstrip("/")


if __name__ == "__main__":
    raise SystemExit(main())
