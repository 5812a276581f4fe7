"""`storybench jobs`: the queued judge and pairwise jobs (list, stop, resume)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .text_safety import terminal_safe


def cmd_jobs(args: argparse.Namespace) -> int:
    from . import job_kinds
    from .access import cli_principal
    from .cli import cli_store
    from .progress import to_table

    store = cli_store(args)
    me = cli_principal()
    if args.stop:
        status = job_kinds.request_stop_job(store, args.stop, me)
        print(f"job {args.stop}: {status}", file=sys.stderr)
        return 0
    if args.resume:
        job_kinds.requeue_job(store, args.resume, me)
        print(
            f"job {args.resume}: queued; a worker (the dashboard's or `storybench worker`) takes it",
            file=sys.stderr,
        )
        return 0
    docs = store.list_jobs(evaluation_id=args.evaluation, limit=args.limit)
    rows: list[dict[str, Any]] = []
    for doc in docs:
        progress = doc.get("progress") or {}
        rows.append(
            {
                "id": doc["id"],
                "kind": doc.get("kind"),
                "evaluation": doc.get("evaluation_id"),
                "judge": doc.get("label"),
                "status": doc.get("status"),
                "progress": f"{progress.get('done', 0)}/{progress.get('total', '?')}" if progress else "",
                "worker": doc.get("worker_id") or "",
                "error": doc.get("error") or "",
            }
        )
    if args.format == "json":
        print(json.dumps(rows, indent=2, default=str))
    elif rows:
        print(terminal_safe(to_table(rows)))
    else:
        print("no jobs", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add the jobs command to the CLI's subparsers."""
    p = subparsers.add_parser(
        "jobs",
        help="list queued and finished judge and pairwise jobs; stop or resume one",
        description="Judge and pairwise jobs (queued with `storybench judge --queue`, `compare-judge --queue` "
        "or the dashboard's Judge now) run in the same worker as evaluations, one model at a time.",
    )
    p.add_argument("evaluation", nargs="?", metavar="EVAL_ID", help="only this evaluation's jobs")
    p.add_argument("--stop", metavar="JOB_ID", help="ask this job to stop after the judgement in progress")
    p.add_argument(
        "--resume",
        metavar="JOB_ID",
        help="queue this stopped or failed job again (does only what is missing)",
    )
    p.add_argument("--limit", type=int, default=50, help="show at most this many, newest first (default 50)")
    p.add_argument(
        "--format", choices=("table", "json"), default="table", help="output format (default: table)"
    )
    p.set_defaults(func=cmd_jobs)
