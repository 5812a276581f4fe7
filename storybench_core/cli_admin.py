"""CLI commands for clean-up and the audit trail: `archive`, `delete`, `audit` (registered by cli.py).

Whoever runs the CLI on the server has a shell there, so acts as admin
(`access.cli_principal()`, "cli:<os user>") and is recorded as such.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .text_safety import terminal_safe


def cmd_archive(args: argparse.Namespace) -> int:
    from . import archive
    from .access import cli_principal
    from .cli import cli_store

    store = cli_store(args)
    if args.restore:
        archive.restore_evaluation(store, args.evaluation, cli_principal())
        print(f"restored {args.evaluation}: it shows in results and leaderboards again", file=sys.stderr)
    else:
        archive.archive_evaluation(store, args.evaluation, cli_principal())
        print(
            f"archived {args.evaluation}: hidden from results and leaderboards, data kept "
            f"(undo with `storybench archive {args.evaluation} --restore`)",
            file=sys.stderr,
        )
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from . import archive
    from .access import cli_principal
    from .cli import cli_store

    path = archive.export_then_delete(cli_store(args), args.evaluation, cli_principal(), Path(args.export))
    print(f"exported {args.evaluation} to {path}, then deleted it from the store", file=sys.stderr)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from . import audit
    from .cli import cli_store
    from .progress import to_table

    since = audit.parse_since(args.since) if args.since else None
    found = audit.entries(
        cli_store(args),
        actor=args.actor,
        action=args.action,
        target=args.target,
        since=since,
        limit=args.limit,
    )
    if args.format == "csv":
        text = audit.export_csv(found)
    elif args.format == "json":
        text = audit.export_json(found)
    else:
        rows = [
            {
                "when (UTC)": e.ts.strftime("%Y-%m-%d %H:%M:%S"),
                "who": e.actor,
                "role": e.role,
                "action": e.action,
                "target": e.target or "",
            }
            for e in found
        ]
        text = (to_table(rows) if rows else "no audit entries match") + "\n"
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {len(found)} entries to {out}", file=sys.stderr)
    else:
        sys.stdout.write(terminal_safe(text))
    return 0


def register(subparsers: Any) -> None:
    """Add `archive`, `delete` and `audit` to the storybench command line."""
    from .access import ACTIONS

    a = subparsers.add_parser(
        "archive", help="hide an evaluation from results and leaderboards, keeping its data (admin)"
    )
    a.add_argument("evaluation", metavar="EVAL_ID", help="the evaluation to archive (or restore)")
    a.add_argument("--restore", action="store_true", help="undo: show it in results again")
    a.set_defaults(func=cmd_archive)

    d = subparsers.add_parser(
        "delete", help="export an evaluation to a JSON file, then delete it from the store (admin)"
    )
    d.add_argument("evaluation", metavar="EVAL_ID", help="the evaluation to export and delete")
    d.add_argument(
        "--export",
        required=True,
        metavar="PATH",
        help="new JSON file for everything stored about it (responses, judgements, console, votes)",
    )
    d.set_defaults(func=cmd_delete)

    au = subparsers.add_parser("audit", help="who changed what and when: the audit trail, newest first")
    au.add_argument("--actor", help="only this principal (an e-mail, cli:USER or local)")
    au.add_argument("--action", choices=ACTIONS, help="only this action")
    au.add_argument("--target", help="only this target (an evaluation id, model path, config name)")
    au.add_argument("--since", help="only from this UTC date or time on (YYYY-MM-DD[THH:MM])")
    au.add_argument("--limit", type=int, help="at most this many entries")
    au.add_argument(
        "--format", choices=["table", "csv", "json"], default="table", help="output format (default: table)"
    )
    au.add_argument("--out", metavar="PATH", help="write to this file instead of the terminal")
    au.set_defaults(func=cmd_audit)
