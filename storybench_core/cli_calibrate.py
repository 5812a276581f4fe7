"""`storybench calibrate-judge`: a judge's reliability card from ladders of known order."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .text_safety import terminal_safe


def cmd_calibrate_judge(args: argparse.Namespace) -> int:
    from . import job_kinds, jobs
    from .access import cli_principal
    from .calibration import CardView, card_lines
    from .cli import cli_store
    from .cli_pairwise import parse_judge
    from .errors import StorybenchError
    from .progress import to_table

    store = cli_store(args)
    me = cli_principal()
    eid = args.evaluation
    if eid is None:
        done = [d for d in store.list_evaluations(statuses=["completed"], brief=True)]
        if not done:
            raise StorybenchError(
                "no completed evaluation to calibrate on; run one first or give --evaluation ID"
            )
        eid = done[0]["id"]
    config = jobs.evaluation_config(jobs.get_evaluation(store, eid))
    spec = parse_judge(args.judge, list(config.models)) if args.judge else None
    params: dict[str, Any] = {"rungs": args.rungs, "attempts": args.attempts, "ladders": args.ladders}
    if args.mode != "both":
        params["modes"] = [args.mode]
    job_id, created = job_kinds.enqueue_job(store, "calibrate", eid, me, judge=spec, **params)
    if args.queue:
        print(
            f"{'queued' if created else 'already queued or running:'} calibration job {job_id}",
            file=sys.stderr,
        )
        print(job_id)
        return 0
    worker = jobs.Worker(store)
    claimed = store.claim_next_job(worker.worker_id, job_id=job_id)
    if claimed is None:
        raise StorybenchError(
            f"calibration job {job_id} is already being done by another worker; see `storybench jobs`"
        )
    label = spec.display_name if spec else "the configured judge"
    print(f"calibrating {label} on evaluation {eid} (job {job_id})", file=sys.stderr)
    try:
        worker.process_job(claimed)
    except KeyboardInterrupt:
        job_kinds.request_stop_job(store, job_id, me)
        print(f"\ninterrupted; resume with: storybench jobs --resume {job_id}", file=sys.stderr)
        return 130
    finally:
        worker.pool.release()
    doc = job_kinds.get_job(store, job_id)
    if doc["status"] != "completed":
        print(f"calibration {doc['status']}: {doc.get('error') or 'see `storybench jobs`'}", file=sys.stderr)
        return 1
    card = doc["result"]
    if args.format == "json":
        print(json.dumps(card, indent=2, default=str))
        return 0
    view = CardView(str(card.get("judge")), str(card.get("verdict")), card, job_id)
    print(terminal_safe(f"reliability card of judge {view.judge} (rubric {card.get('rubric_hash')})"))
    print(terminal_safe(to_table([{"figure": k, "value": v} for k, v in card_lines(view)])))
    for reason in card.get("reasons") or []:
        print(terminal_safe(f"warning: {reason}"), file=sys.stderr)
    print(terminal_safe(f"verdict: {card.get('verdict')}"))
    return 0


def register(subparsers: Any) -> None:
    """Add calibrate-judge to the CLI's subparsers."""
    from .calibration import DEFAULT_ATTEMPTS, DEFAULT_LADDERS, DEFAULT_RUNGS, MAX_RUNGS

    p = subparsers.add_parser(
        "calibrate-judge",
        help="test a judge on ladders of degraded versions of stored responses; print its reliability card",
        description="Builds ladders whose order is known (a response, then versions degraded step by step: names "
        "swapped, sentences shuffled, padding, cut, then an answer to another brief), has the judge score them "
        "(rubric mode, several attempts) and compare adjacent rungs (pairwise, both orders), and files the card "
        "under the judge's identity. Runs as a job: progress in the console, Ctrl-C stops it.",
    )
    p.add_argument(
        "--judge", help="the judge to calibrate (default: the evaluation's judge); as compare-judge's --judge"
    )
    p.add_argument(
        "--evaluation",
        metavar="EVAL_ID",
        help="whose stored responses to build ladders from (default: the newest completed)",
    )
    p.add_argument(
        "--rungs",
        type=int,
        default=DEFAULT_RUNGS,
        help=f"rungs per ladder, 2–{MAX_RUNGS} (default {DEFAULT_RUNGS})",
    )
    p.add_argument(
        "--attempts",
        type=int,
        default=DEFAULT_ATTEMPTS,
        help=f"rubric judgements per rung, 1–10 (default {DEFAULT_ATTEMPTS})",
    )
    p.add_argument(
        "--ladders",
        type=int,
        default=DEFAULT_LADDERS,
        help=f"ladders, one per chosen response (default {DEFAULT_LADDERS})",
    )
    p.add_argument(
        "--mode",
        choices=("both", "rubric", "pairwise"),
        default="both",
        help="which judging modes to test (default both)",
    )
    p.add_argument(
        "--queue",
        action="store_true",
        help="queue the calibration job for a worker instead of running it here",
    )
    p.add_argument(
        "--format", choices=("table", "json"), default="table", help="output format (default: table)"
    )
    p.set_defaults(func=cmd_calibrate_judge)
