"""One evaluation on the local worker and on 1 and 2 Ray nodes of one slot each, on this machine.

The same evaluation (the bundled Gemma 3 270M, --sequences × --runs conversations of three turns,
--max-tokens new tokens a response) through the Worker, first with no Ray address (the local
runner: the baseline), then with STORYBENCH_RAY_ADDRESS pointing at a ray.cluster_utils cluster of
one node, then of two nodes, each node one CPU slot (one actor, one loaded model). Each Ray variant
runs with the model's default thread count and with --node-threads threads per node (1: the two
nodes do not compete for the cores of a 2-core machine). Printed per variant: wall time, aggregate
tokens/s (every new token ÷ wall time, model loads, slot start-up and storage included), the ratio
to the local worker, and the responses stored per node. The control: two plain local worker
processes side by side (no Ray), each on half of the sequences: what two model instances on this
machine give without any cluster.

Then the dispatch overhead: --fake-conversations conversations on the scripted fake backend (no
model time at all), one conversation per dispatch, on one Ray node against the local worker:
(Ray wall − local wall − slot start-up) ÷ conversations.

Ray's head probes a cloud metadata address when it starts, so this script runs itself inside a
loopback-only network namespace (`unshare -n`, as root), with RAY_USAGE_STATS_ENABLED=0.

    .venv/bin/python bench/scale.py [--sequences film,thriller] [--runs 2] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IN_NETNS_ENV = "STORYBENCH_BENCH_NETNS"


def reexec_in_namespace() -> int:
    """Run this script again inside a loopback-only network namespace; its exit code."""
    if shutil.which("unshare") is None:
        print(
            "error: needs unshare (util-linux) and root for a loopback-only network namespace",
            file=sys.stderr,
        )
        return 2
    env = {**os.environ, IN_NETNS_ENV: "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, *sys.argv]
    return subprocess.run(cmd, env=env).returncode


def cpu_line() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text()
        simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    except OSError:
        simd = "?"
    return f"{model}, {simd}, {os.cpu_count()} vCPU, {platform.python_version()}"


def config(args: argparse.Namespace, threads: int | None, fake: bool = False) -> Any:
    from storybench_core.config import parse_config

    if fake:
        model: dict[str, Any] = {"kind": "fake", "options": {"words": 8}}
        runs, sequences = max(1, args.fake_conversations // 2), ["film", "thriller"]
    else:
        model = {"kind": "bundled", "options": {"n_threads": threads} if threads else {}}
        runs, sequences = args.runs, args.sequences.split(",")
    return parse_config(
        {
            "name": "scale",
            "models": [model],
            "sequences": sequences,
            "generation": {"runs": runs, "max_tokens": args.max_tokens, "temperature": 0.8, "seed": 7},
        }
    )


def run_once(store: Any, cfg: Any, executor: Any | None) -> dict[str, Any]:
    """Queue and run one evaluation through the Worker; what it did and how long it took."""
    from storybench_core import jobs
    from storybench_core.access import LOCAL_ADMIN

    eid = jobs.enqueue(store, cfg, LOCAL_ADMIN)
    worker = jobs.Worker(store)
    start = time.perf_counter()
    if executor is None:
        assert worker.run_once()
    else:
        import storybench_core.jobs as jobs_module

        saved = jobs_module.cluster_executor
        jobs_module.cluster_executor = lambda: executor  # this one, with its caps
        try:
            assert worker.run_once()
        finally:
            jobs_module.cluster_executor = saved
    wall = time.perf_counter() - start
    doc = store.get_evaluation(eid)
    responses = store.list_responses(eid, include_messages=False)
    events = store.list_events(eid)
    per_node: Counter[str] = Counter()
    for e in events:
        if e.get("ray_node") and e.get("stored") is not None:
            per_node[e["ray_node"][:8]] += int(e["stored"])
    started = next((e["ts"] for e in events if "started (lease" in e["message"]), None)
    first = next((e["ts"] for e in events if "conversation(s):" in e["message"]), None)
    startup = (first - started).total_seconds() if started and first else 0.0
    return {
        "status": doc["status"],
        "wall_s": wall,
        "responses": len(responses),
        "tokens": sum(int(r.get("completion_tokens") or 0) for r in responses),
        "per_node": dict(per_node),
        "startup_s": startup,
        "conversations": len({(r["sequence"], r["run"]) for r in responses}),
        "widths": sorted({int(r.get("batch_width") or 1) for r in responses}),
    }


def side_by_side(args: argparse.Namespace) -> dict[str, Any]:
    """The control: two plain local worker processes at once, each on half of the sequences."""
    seqs = args.sequences.split(",")
    common = [
        "--runs",
        str(args.runs),
        "--max-tokens",
        str(args.max_tokens),
        "--node-threads",
        str(args.node_threads),
    ]
    children = [
        subprocess.Popen(
            [sys.executable, __file__, *common, "--one-local", ",".join(half)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for half in (seqs[0::2], seqs[1::2])
    ]
    results = [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]
    return {
        "status": "/".join(sorted({r["status"] for r in results})),
        "wall_s": max(r["wall_s"] for r in results),
        "responses": sum(r["responses"] for r in results),
        "tokens": sum(r["tokens"] for r in results),
        "per_node": {f"process {i + 1}": r["responses"] for i, r in enumerate(results)},
        "startup_s": 0.0,
        "conversations": sum(r["conversations"] for r in results),
        "widths": sorted({w for r in results for w in r["widths"]}),
    }


def with_cluster(nodes: int, work: Any) -> Any:
    """Start a cluster of `nodes` one-slot nodes on loopback, run work(address), shut it down."""
    import ray
    from ray.cluster_utils import Cluster

    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    print(f"  ({nodes}-node cluster up in {time.perf_counter() - t0:.1f} s)", flush=True)
    try:
        return work(cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", default="film,thriller")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument(
        "--node-threads", type=int, default=1, help="llama threads per Ray node in the second pass"
    )
    ap.add_argument("--fake-conversations", type=int, default=40)
    ap.add_argument("--one-local", help=argparse.SUPPRESS)  # a child of the side-by-side control
    args = ap.parse_args()
    if os.environ.get(IN_NETNS_ENV) != "1":
        return reexec_in_namespace()

    home = Path(tempfile.mkdtemp(prefix="storybench-scale-"))
    os.environ["STORYBENCH_HOME"] = str(home)
    os.environ["STORYBENCH_ENABLE_FAKE_BACKEND"] = "1"
    # No width measurement: every variant decodes all of its conversations together (what memory
    # allows), so the figures compare executors, not probes taken at different moments.
    os.environ["STORYBENCH_WIDTH_PROBE"] = "0"
    from storybench_core import bundled
    from storybench_core.executors import RayExecutor
    from storybench_core.store.sqlite import SQLiteStore

    shared = ROOT / ".pytest_cache" / "storybench-models" / bundled.bundled_model_path().name
    target = bundled.bundled_model_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    if shared.is_file():
        os.link(shared, target)
    bundled.ensure_bundled_model()
    store = SQLiteStore(home / "scale.db")
    if args.one_local:
        args.sequences = args.one_local
        print(json.dumps(run_once(store, config(args, args.node_threads), None)), flush=True)
        shutil.rmtree(home, ignore_errors=True)
        return 0
    print(f"CPU: {cpu_line()}; load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    n_conv = len(args.sequences.split(",")) * args.runs
    print(
        f"work: {n_conv} conversations × 3 turns × {args.max_tokens} tokens, bundled Gemma 3 270M\n",
        flush=True,
    )

    rows: list[tuple[str, dict[str, Any]]] = []

    def report(name: str, result: dict[str, Any]) -> None:
        rows.append((name, result))
        tps = result["tokens"] / result["wall_s"]
        base = rows[0][1]["tokens"] / rows[0][1]["wall_s"]
        nodes = ", ".join(f"{k}: {v}" for k, v in result["per_node"].items()) or "-"
        print(
            f"{name:<42} {result['status']:<9} {result['wall_s']:6.1f} s  {result['tokens']:5d} tok  "
            f"{tps:6.1f} tok/s  × {tps / base:4.2f}  width {','.join(map(str, result['widths']))}  "
            f"start-up {result['startup_s']:4.1f} s  per node {nodes}",
            flush=True,
        )

    report("local worker (default threads)", run_once(store, config(args, None), None))
    report(
        f"local worker ({args.node_threads} thread)", run_once(store, config(args, args.node_threads), None)
    )
    if len(args.sequences.split(",")) >= 2:
        report(f"2 local workers side by side, no Ray ({args.node_threads} thread)", side_by_side(args))
    for nodes in (1, 2):
        for threads in (None, args.node_threads):
            label = f"Ray {nodes} node(s) × 1 slot ({'default' if threads is None else threads} threads)"
            result = with_cluster(
                nodes, lambda a, t=threads: run_once(store, config(args, t), RayExecutor(a))
            )
            report(label, result)

    print("\ndispatch overhead (fake backend, one conversation per dispatch):", flush=True)
    fake = config(args, None, fake=True)
    local = run_once(store, fake, None)
    ray_run = with_cluster(1, lambda a: run_once(store, fake, RayExecutor(a, max_share=1)))
    n = ray_run["conversations"]
    per_conv = (ray_run["wall_s"] - local["wall_s"] - ray_run["startup_s"]) / max(n, 1)
    print(
        f"  local {local['wall_s']:.2f} s, Ray 1 node {ray_run['wall_s']:.2f} s for {n} conversations; "
        f"slot start-up {ray_run['startup_s']:.2f} s; overhead {1000 * per_conv:.0f} ms per conversation",
        flush=True,
    )
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    store.close()
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
