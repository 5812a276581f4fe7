"""Batched vs one-at-a-time generation on the bundled model, in one command (issues 8 and 13).

--work quickstart (the default): the quickstart's whole work — every sequence of
examples/quickstart.json × 3 runs on the bundled Gemma 3 270M, temperature 0,
a fixed budget of new tokens per response — through storybench's Runner:

- width 1 (`parallel_runs = 1`): one conversation after another;
- per sequence (`Runner(group="sequence")`): the runs of one sequence
  decoded together, one sequence after another (the behaviour before issue 13);
- whole evaluation (the default): every pending conversation of the model,
  across sequences, at the width the scheduler chooses from memory and the
  measured decode rates (storybench_core/width_probe.py; measured once
  before the timings and printed);
- each --widths W: the whole evaluation at `parallel_runs = W`;
- with --llama-server PATH|auto: the same work sent to llama.cpp's own
  `llama-server -np 8` (built from the installed llama-cpp-python's sources by
  bench/llama_server.sh; `auto` builds it, within --build-timeout seconds, or
  says why it skipped) through storybench's API backend, 8 requests in flight.

Printed: aggregate tokens/s (all new tokens ÷ wall time, prompt processing and
storage included), the ratio to width 1, the width used, the prompt tokens
sent and evaluated, and how many texts equal the width-1 texts. By default
the end-of-generation token and the transcript's stop markers are ignored so
every response is exactly --max-tokens long (--natural-stops keeps them).
Each figure is the best of --repeat runs, alternating the paths, each from an
empty KV cache.

--work sequence: the earlier table — one sequence (--sequence), 3 turns,
`runs` = each of --widths, sequential vs batched, optionally against a server
(--server URL, --start-server, --llama-server PATH with -np = the widest).

    .venv/bin/python bench/batched.py [--max-tokens 48] [--repeat 1] [--widths 8,15]
    .venv/bin/python bench/batched.py --llama-server auto
    .venv/bin/python bench/batched.py --work sequence --widths 1,2,3,4,8 --max-tokens 64
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from storybench_core.access import LOCAL_ADMIN  # noqa: E402

SERVER_SLOTS = 8  # llama-server -np for the quickstart work


@dataclasses.dataclass
class Measurement:
    """One evaluation's wall time, tokens, widths and texts."""

    wall_s: float
    completion_tokens: int
    responses: int
    prompt_sent: dict[int, int]
    prompt_evaluated: dict[int, int | None]
    batch_widths: set[Any]
    texts: dict[tuple[str, int, int], str] = dataclasses.field(default_factory=dict)
    width_note: str = ""

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s else 0.0

    @property
    def sent_total(self) -> int:
        return sum(self.prompt_sent.values())

    @property
    def evaluated_total(self) -> int | None:
        values = list(self.prompt_evaluated.values())
        return None if any(v is None for v in values) else sum(v or 0 for v in values)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["batch_widths"] = sorted(w for w in self.batch_widths if w is not None)
        out["texts"] = [[*k, t] for k, t in self.texts.items()]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measurement:
        return cls(
            wall_s=data["wall_s"],
            completion_tokens=data["completion_tokens"],
            responses=data["responses"],
            prompt_sent={int(k): v for k, v in data["prompt_sent"].items()},
            prompt_evaluated={int(k): v for k, v in data["prompt_evaluated"].items()},
            batch_widths=set(data["batch_widths"]),
            texts={(a, b, c): t for a, b, c, t in data["texts"]},
            width_note=data.get("width_note", ""),
        )


@contextmanager
def eos_ignored() -> Iterator[None]:
    """Treat no token as end-of-generation, in every path (a fixed budget per response)."""
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


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def measure(
    store: Any, config: Any, backend: Any, before: Callable[[], None] = lambda: None, **runner: Any
) -> Measurement:
    """Run one evaluation through the Runner on an already loaded backend."""
    from storybench_core.jobs import enqueue, get_evaluation
    from storybench_core.runner import ModelPool, RunHooks, Runner

    errors: list[str] = []
    widths: list[str] = []

    def event(level: str, message: str, **_: Any) -> None:
        if level == "error":
            errors.append(message)
        if "batch width" in message:
            widths.append(message)

    eid = enqueue(store, config, LOCAL_ADMIN)
    before()
    start = time.perf_counter()
    summary = Runner(store, ModelPool(lambda spec, gen: backend), RunHooks(event=event), **runner).execute(
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
        {(d["sequence"], d["run"], d["prompt_index"]): d["response"] for d in docs},
        widths[0] if widths else "",
    )


def best(a: Measurement | None, b: Measurement) -> Measurement:
    return b if a is None or b.tokens_per_s > a.tokens_per_s else a


def same_texts(reference: Measurement, other: Measurement) -> tuple[int, int]:
    return sum(other.texts.get(k) == t for k, t in reference.texts.items()), len(reference.texts)


def load_bundled(args: argparse.Namespace, n_ctx: int, quiet: bool = False) -> tuple[Any, dict[str, Any]]:
    """The bundled model loaded once for every local path; its stop markers dropped unless --natural-stops."""
    from storybench_core.backends.llama import create_llama_backend
    from storybench_core.config import GenerationSettingsConfig, ModelSpec

    options: dict[str, Any] = {"n_threads": args.threads} if args.threads else {}
    if args.flash_attn:
        options["flash_attn"] = True
    model = {"kind": "bundled", "options": options}
    backend = create_llama_backend(ModelSpec(**model), GenerationSettingsConfig(n_ctx=n_ctx))
    if not quiet:
        print(f"model: {backend.name} — {backend.load_note}")
        print(
            f"CPU matrix kernels: {backend.engine_info['cpu_matmul']} (storybench_core/backends/llama_kernels.py)"
        )
    if not args.natural_stops:
        backend.template = dataclasses.replace(backend.template, stop=())
    return backend, model


def cold_cache(backend: Any) -> Callable[[], None]:
    def cold() -> None:
        """Every path starts from empty KV caches: the first prompts are evaluated in full."""
        from storybench_core.backends.llama_batch import decoder_for

        decoder_for(backend, 1).clear()

    return cold


# --- the quickstart's whole work ---------------------------------------------------------------


def quickstart_config(args: argparse.Namespace, model: dict[str, Any], parallel_runs: int | None) -> Any:
    from storybench_core.config import parse_config

    raw = json.loads((ROOT / "examples" / "quickstart.json").read_text(encoding="utf-8"))
    raw["name"] = f"bench quickstart parallel_runs={parallel_runs}"
    raw["models"] = [model]
    raw["generation"] |= {
        "runs": args.runs,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "parallel_runs": parallel_runs,
    }
    return parse_config(raw)


def quickstart_rows(args: argparse.Namespace, store: Any) -> list[dict[str, Any]]:
    """Each path on a freshly loaded model (load time not timed), as in a fresh worker: the
    batch decoder is sized by that path's width, its KV caches start empty."""
    n_ctx = quickstart_config(args, {"kind": "bundled"}, None).generation.n_ctx
    paths: list[tuple[str, int | None, dict[str, Any]]] = [
        ("width 1", 1, {}),
        ("per sequence", None, {"group": "sequence"}),
        ("whole evaluation", None, {}),
        *[(f"whole evaluation, parallel_runs {w}", w, {}) for w in args.widths],
    ]
    if args.only_width1:  # one width: nothing to measure
        paths = paths[:1]
    else:
        measure_widths(args, n_ctx)
    found: dict[str, Measurement | None] = {label: None for label, _, _ in paths}
    for _ in range(args.repeat):
        for label, parallel_runs, runner in paths:
            backend, model = load_bundled(args, n_ctx, quiet=True)
            try:
                m = measure(store, quickstart_config(args, model, parallel_runs), backend, **runner)
            finally:
                backend.close()
            found[label] = best(found[label], m)
            widths = "/".join(str(w) for w in sorted(w for w in m.batch_widths if w is not None)) or "1"
            print(f"  {label}: {m.tokens_per_s:.1f} tok/s ({m.wall_s:.1f} s, width {widths})", flush=True)
    return [{"label": label, "m": m} for label, m in found.items() if m is not None]


def measure_widths(args: argparse.Namespace, n_ctx: int) -> None:
    """The decode rates by width, measured once (not timed) and cached for the timed runs."""
    from storybench_core.width_probe import probe_rates, save_rates
    from storybench_core.widths import choose_width

    backend, model = load_bundled(args, n_ctx)
    try:
        config = quickstart_config(args, model, None)
        most, _ = choose_width(backend, config.generation, len(config.sequences) * config.generation.runs)
        probe = probe_rates(backend, most)
        if not probe.kept:  # the timed whole-evaluation runs below must not measure again
            save_rates(backend, probe.rates)
        print(
            f"decode rates by width ({probe.describe()}; the timed runs below use them; not timed): "
            + ", ".join(f"{w}: {r:.1f}" for w, r in sorted(probe.rates.items())),
            flush=True,
        )
    finally:
        backend.close()


def mixed_width1_row(args: argparse.Namespace) -> dict[str, Any] | None:
    """Width 1 on llama.cpp's own kernel choice (STORYBENCH_CPU_MATMUL=mixed), in a child process.

    ggml reads its kernel switch once per process, so the other engine needs its own process:
    the fastest way to run one conversation at a time, the baseline a user who never batches
    would compare against (its texts differ from the tiled kernels' texts: other rounding).
    """
    with tempfile.TemporaryDirectory(prefix="sb-bench-mixed-") as tmp:
        out = Path(tmp) / "width1.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--only-width1", "--json-out", str(out)]
        command += [
            "--max-tokens",
            str(args.max_tokens),
            "--runs",
            str(args.runs),
            "--repeat",
            str(args.repeat),
        ]
        command += ["--temperature", str(args.temperature)]
        command += ["--threads", str(args.threads)] if args.threads else []
        command += ["--natural-stops"] if args.natural_stops else []
        command += ["--flash-attn"] if args.flash_attn else []
        from storybench_core.backends.llama_kernels import without_our_kernel_choice

        env = without_our_kernel_choice(dict(os.environ)) | {"STORYBENCH_CPU_MATMUL": "mixed"}
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in done.stdout.splitlines():
            if line.startswith("  width 1:"):
                print(line.replace("width 1:", "width 1, mixed kernels:"), flush=True)
        if done.returncode != 0 or not out.is_file():
            print(f"skipping width 1 with mixed kernels (exit {done.returncode}):\n{done.stdout[-2000:]}")
            return None
        return {"label": "width 1, mixed kernels", "m": Measurement.from_json(json.loads(out.read_text()))}


def allow_loopback(url: str) -> None:
    """Let the API backend reach the benchmark's own loopback server (the endpoint allowlist)."""
    allowed = json.loads(os.environ.get("STORYBENCH_API_ENDPOINTS") or "{}")
    os.environ["STORYBENCH_API_ENDPOINTS"] = json.dumps(allowed | {url: ""})


def quickstart_server_row(args: argparse.Namespace, store: Any, url: str, slots: int) -> dict[str, Any]:
    """The same work through an OpenAI-compatible server, `slots` requests in flight."""
    from storybench_core.backends.openai_compat import OpenAIBackend, list_endpoint_models
    from storybench_core.config import GenerationSettingsConfig, ModelSpec

    allow_loopback(url)
    probe = ModelSpec(kind="api", name="server", base_url=url, api_model="x")
    api_model = args.server_model or list_endpoint_models(probe)[0]
    extra = {} if args.natural_stops else {"ignore_eos": True, "min_tokens": args.max_tokens}
    model = {
        "kind": "api",
        "name": "server",
        "base_url": url,
        "api_model": api_model,
        "max_concurrency": slots,
        "timeout_s": 600,
        "options": {"n_ctx": 4096, "extra_body": extra},
    }
    backend = OpenAIBackend(ModelSpec(**model), GenerationSettingsConfig(n_ctx=4096))
    found: Measurement | None = None
    try:
        for _ in range(args.repeat):
            m = measure(store, quickstart_config(args, model, None), backend)
            print(f"  server, {slots} in flight: {m.tokens_per_s:.1f} tok/s ({m.wall_s:.1f} s)", flush=True)
            found = best(found, m)
    finally:
        backend.close()
    assert found is not None
    return {"label": f"llama-server -np {slots}", "m": found}


def print_quickstart(rows: list[dict[str, Any]]) -> None:
    base = rows[0]["m"]
    print(
        f"\n{'path':<36} {'width':>5} {'tok/s':>7} {'× width 1':>9} {'wall s':>7} {'tokens':>6} "
        f"{'prompt sent/evaluated':>22}  texts = width 1"
    )
    for row in rows:
        m: Measurement = row["m"]
        widths = sorted(w for w in m.batch_widths if w is not None) or [1]
        width = "/".join(map(str, widths)) if "server" not in row["label"] else "-"
        same, total = same_texts(base, m)
        evaluated = m.evaluated_total
        prompt = f"{m.sent_total}/{evaluated if evaluated is not None else '?'}"
        print(
            f"{row['label']:<36} {width:>5} {m.tokens_per_s:>7.1f} {m.tokens_per_s / base.tokens_per_s:>9.2f} "
            f"{m.wall_s:>7.1f} {m.completion_tokens:>6} {prompt:>22}  {same}/{total}"
        )
    for row in rows:
        if row["m"].width_note:
            print(f"  {row['label']}: {row['m'].width_note}")
    by_label = {row["label"]: row["m"].tokens_per_s for row in rows}
    whole = by_label.get("whole evaluation")
    if whole:
        print("\nwhole evaluation (the default) against:")
        for row in rows:
            if row["label"] != "whole evaluation":
                print(f"  {row['label']:<34} × {whole / row['m'].tokens_per_s:.2f}")


# --- one sequence, runs = each width (the earlier table) -----------------------------------------


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


def sequence_rows(args: argparse.Namespace, store: Any) -> list[dict[str, Any]]:
    backend, model = load_bundled(args, args.n_ctx)
    rows = []
    try:
        for width in args.widths:
            seq: Measurement | None = None
            bat: Measurement | None = None
            for _ in range(args.repeat):
                cold = cold_cache(backend)
                seq = best(seq, measure(store, make_config(width, 1, args, model), backend, cold))
                bat = best(bat, measure(store, make_config(width, width, args, model), backend, cold))
            assert seq is not None and bat is not None
            same = same_texts(seq, bat)
            rows.append({"width": width, "sequential": seq, "batched": bat, "same": same})
            print(
                f"  width {width}: sequential {seq.tokens_per_s:6.1f} tok/s, batched {bat.tokens_per_s:6.1f} tok/s "
                f"(× {bat.tokens_per_s / seq.tokens_per_s:.2f}), same texts {same[0]}/{same[1]}",
                flush=True,
            )
    finally:
        backend.close()
    return rows


def server_rows(args: argparse.Namespace, store: Any, url: str) -> list[dict[str, Any]]:
    from storybench_core.backends.openai_compat import OpenAIBackend, list_endpoint_models
    from storybench_core.config import GenerationSettingsConfig, ModelSpec

    allow_loopback(url)
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
        cells = [
            f"turn {t}: {b.prompt_sent[t]} / {s.prompt_evaluated.get(t)} / {b.prompt_evaluated.get(t)}"
            for t in sorted(b.prompt_sent)
        ]
        print(f"  runs {row['width']}: " + "; ".join(cells))


# --- servers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def thread_count(args: argparse.Namespace) -> str:
    from storybench_core.hardware import hardware_snapshot

    return str(args.threads or hardware_snapshot(cpu_sample_s=0).cpu_count_physical or os.cpu_count() or 1)


@contextmanager
def llama_cpp_server(args: argparse.Namespace) -> Iterator[str]:
    """llama-cpp-python's server on a free loopback port; yields its /v1 URL."""
    from storybench_core.bundled import ensure_bundled_model

    port = free_port()
    threads = thread_count(args)  # the server's default is half the logical CPUs
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(ensure_bundled_model()),
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(args.n_ctx), "--model_alias", "bundled",
        "--n_threads", threads, "--n_threads_batch", threads,
        "--flash_attn", "true" if args.flash_attn else "false",
    ]  # fmt: skip
    yield from _serve(command, port, "llama_cpp.server")


@contextmanager
def llama_server_binary(args: argparse.Namespace, binary: str, slots: int, n_ctx: int) -> Iterator[str]:
    """llama.cpp's llama-server with `slots` parallel slots of n_ctx tokens, on a free loopback port.

    The threads match storybench's, and --swa-full gives it the same full sliding-window cache
    storybench uses (without it Gemma 3's cached prefixes cannot be reused and every turn would
    re-process the whole conversation).
    """
    from storybench_core.bundled import ensure_bundled_model

    threads = thread_count(args)
    port = free_port()
    command = [
        binary,
        "-m", str(ensure_bundled_model()),
        "--host", "127.0.0.1", "--port", str(port),
        "-np", str(slots), "-c", str(n_ctx * slots),
        "-t", threads, "-tb", threads,
        "--swa-full", "--alias", "bundled",
        "-fa", "on" if args.flash_attn else "off",
    ]  # fmt: skip
    yield from _serve(command, port, "llama-server")


def _serve(command: list[str], port: int, label: str) -> Iterator[str]:
    """Start a server process, wait until /v1/models answers, yield its URL, stop it."""
    log_path = Path(tempfile.gettempdir()) / f"storybench-bench-server-{port}.log"
    from storybench_core.backends.llama_kernels import without_our_kernel_choice

    # The server runs on llama.cpp's own kernel choice, not the one this process set for itself.
    env = without_our_kernel_choice(dict(os.environ))
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
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


def built_llama_server(timeout_s: float) -> str | None:
    """bench/llama_server.sh's binary (built now if needed, within timeout_s); None with a message if not."""
    log_path = Path(tempfile.gettempdir()) / "storybench-bench-llama-server-build.log"
    print(f"building llama-server with bench/llama_server.sh (at most {timeout_s:.0f} s; log: {log_path})")
    try:
        with log_path.open("w") as log:
            out = subprocess.run(
                ["bash", str(ROOT / "bench" / "llama_server.sh")],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                timeout=timeout_s,
            )
    except subprocess.TimeoutExpired:
        print(f"skipping llama-server: not built within {timeout_s:.0f} s (--build-timeout); see {log_path}")
        return None
    path = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if out.returncode != 0 or not path or not Path(path).is_file():
        print(f"skipping llama-server: bench/llama_server.sh failed (exit {out.returncode}); see {log_path}")
        return None
    return path


# --- main ----------------------------------------------------------------------------------------


def cpu_line() -> str:
    """'AMD EPYC …, 2 vCPU, avx512f avx2 …' from /proc/cpuinfo (the SIMD flags only)."""
    name, flags = "unknown CPU", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown CPU":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = [f for f in value.split() if f.startswith(("avx", "fma", "f16c", "amx"))]
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} vCPU, {' '.join(flags)}"


def cpu_pressure() -> float | None:
    """Share of the last minute in which some task waited for a CPU (Linux PSI), or None."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(line.split("avg60=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--work", choices=("quickstart", "sequence"), default="quickstart", help="which work to time"
    )
    ap.add_argument(
        "--widths",
        default=None,
        help="quickstart: extra parallel_runs to time (e.g. 8,15); sequence: run counts (default 1,2,3,4,8)",
    )
    ap.add_argument("--max-tokens", type=int, default=None, help="new tokens per response (48; sequence: 64)")
    ap.add_argument("--runs", type=int, default=3, help="quickstart: runs of each sequence (default 3)")
    ap.add_argument("--sequence", default="film", help="sequence work: the catalog sequence (3 turns)")
    ap.add_argument("--temperature", type=float, default=None, help="default 0 (sequence work: 0.8)")
    ap.add_argument("--n-ctx", type=int, default=2048, help="sequence work: context tokens")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: physical cores)")
    ap.add_argument(
        "--repeat", type=int, default=None, help="measure each figure this many times; keep the best"
    )
    ap.add_argument("--flash-attn", action="store_true", help="load with flash attention (every path)")
    ap.add_argument("--natural-stops", action="store_true", help="stop at EOS / stop markers (unequal work)")
    ap.add_argument(
        "--server", default=None, help="sequence work: an OpenAI-compatible /v1 URL to compare against"
    )
    ap.add_argument("--server-model", default=None, help="model id at the server (default: the first listed)")
    ap.add_argument(
        "--start-server", action="store_true", help="sequence work: start llama-cpp-python's server"
    )
    ap.add_argument(
        "--llama-server",
        default=None,
        metavar="PATH|auto",
        help="a llama-server binary (bench/llama_server.sh builds one; 'auto' builds it here) to compare against",
    )
    ap.add_argument("--build-timeout", type=float, default=900, help="seconds --llama-server auto may build")
    ap.add_argument("--skip-local", action="store_true", help="only the server figures")
    ap.add_argument(
        "--no-mixed",
        action="store_true",
        help="quickstart: skip width 1 on llama.cpp's own kernels (a child)",
    )
    ap.add_argument("--only-width1", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    quick = args.work == "quickstart"
    default_widths = "" if quick else "1,2,3,4,8"
    args.widths = [int(w) for w in (args.widths or default_widths).split(",") if w.strip()]
    args.max_tokens = args.max_tokens or (48 if quick else 64)
    args.temperature = args.temperature if args.temperature is not None else (0.0 if quick else 0.8)
    args.repeat = args.repeat or (1 if quick else 2)
    return args


def main() -> int:
    args = parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    # The API backend warns for each server reply one token over the fixed budget (cut off there).
    logging.getLogger("storybench_core.backends").setLevel(logging.ERROR)
    busy_before = cpu_pressure()
    os.environ.setdefault("STORYBENCH_HOME", tempfile.mkdtemp(prefix="sb-bench-batched-"))
    from storybench_core.store.sqlite import SQLiteStore

    if args.llama_server == "auto":
        args.llama_server = built_llama_server(args.build_timeout)
    store = SQLiteStore(Path(os.environ["STORYBENCH_HOME"]) / "bench.db")
    budget = "EOS and stop markers ignored" if not args.natural_stops else "natural stops"
    fa = "flash attention on" if args.flash_attn else "flash attention off"
    print(f"cpu: {cpu_line()}; threads: {args.threads or 'physical cores'}")
    with eos_ignored() if not args.natural_stops else _nothing():
        if args.work == "quickstart":
            run_quickstart(args, store, budget, fa)
        else:
            run_sequence(args, store, budget, fa)
    store.close()
    busy = max(busy_before or 0.0, cpu_pressure() or 0.0)
    if busy > 20:
        print(
            f"\nwarning: other processes competed for the CPU (/proc/pressure/cpu some avg60 up to {busy:.0f}%); "
            "llama.cpp's threads slow down sharply when they are not alone — rerun on an idle machine"
        )
    return 0


def run_quickstart(args: argparse.Namespace, store: Any, budget: str, fa: str) -> None:
    print(
        f"work: examples/quickstart.json's sequences × {args.runs} runs on the bundled model, "
        f"{args.max_tokens} new tokens per response ({budget}), temperature {args.temperature}; "
        f"best of {args.repeat}; {fa}"
    )
    rows = [] if args.skip_local else quickstart_rows(args, store)
    if args.only_width1:
        if args.json_out and rows:
            Path(args.json_out).write_text(json.dumps(rows[0]["m"].to_json()))
        return
    if rows and not args.no_mixed:
        mixed = mixed_width1_row(args)
        rows += [mixed] if mixed else []
    if args.llama_server:
        n_ctx = quickstart_config(args, {"kind": "bundled"}, None).generation.n_ctx
        with llama_server_binary(args, args.llama_server, SERVER_SLOTS, n_ctx) as url:
            rows.append(quickstart_server_row(args, store, url, SERVER_SLOTS))
    if rows:
        print_quickstart(rows)


def run_sequence(args: argparse.Namespace, store: Any, budget: str, fa: str) -> None:
    print(
        f"work: sequence '{args.sequence}', 3 turns, runs = {args.widths}, {args.max_tokens} new tokens per "
        f"response ({budget}), temperature {args.temperature}, n_ctx {args.n_ctx}; best of {args.repeat}; {fa}"
    )
    local: list[dict[str, Any]] = []
    if not args.skip_local:
        local = sequence_rows(args, store)
        print_table(
            "local model: sequential (parallel_runs 1) vs batched (parallel_runs = runs)", local, "batched"
        )
        print_prefix_reuse(local)
    if not (args.server or args.start_server or args.llama_server):
        return
    if args.llama_server:
        starter = llama_server_binary(args, args.llama_server, max(args.widths), args.n_ctx)
        note = f"llama.cpp's llama-server -np {max(args.widths)}, continuous batching"
    elif args.start_server:
        starter = llama_cpp_server(args)
        note = "llama-cpp-python's server answers one request at a time: 'concurrent' is a queue here"
    else:
        starter = _given(args.server)
        note = f"server at {args.server}"
    with starter as url:
        remote = server_rows(args, store, url)
    print_table(f"OpenAI-compatible server ({note})", remote, "concurrent")
    if local:
        print("\nside by side, aggregate tok/s (same sequence, turns, runs and token budget):")
        for lrow, rrow in zip(local, remote, strict=False):
            ours, theirs = lrow["batched"].tokens_per_s, rrow["batched"].tokens_per_s
            print(
                f"  runs {lrow['width']}: storybench batched {ours:.1f} vs server concurrent {theirs:.1f} (× {ours / theirs:.2f})"
            )


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url.rstrip("/")


if __name__ == "__main__":
    raise SystemExit(main())
