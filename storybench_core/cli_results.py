"""CLI commands beside the judge and results: `judge`, `export`, `leaderboard` (registered by cli.py).

Exit codes follow cli.py: StorybenchError → 2 (main maps it); a judge run
that stored failed judgements → 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, StorybenchError
from .text_safety import terminal_safe


def parse_judge_model(text: str) -> Any:
    """`bundled`, `bundled:BUILTIN_ID`, `path:FILE.gguf`, `fake` or a JSON model spec → ModelSpec."""
    from pydantic import ValidationError

    from .config import ModelSpec

    text = text.strip()
    if text == "bundled":
        data: Any = {"kind": "bundled"}
    elif text.startswith("bundled:"):
        data = {"kind": "bundled", "builtin": text.removeprefix("bundled:")}
    elif text == "fake":
        data = {"kind": "fake"}
    elif text.startswith("path:"):
        data = {"kind": "path", "path": text.removeprefix("path:")}
    elif text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--judge-model: not valid JSON ({exc.msg} at column {exc.colno})") from None
    else:
        raise ConfigError(
            f"--judge-model {text!r}: use bundled, bundled:smollm2-135m-instruct, path:/models/x.gguf, "
            "or a JSON model spec such as "
            '\'{"kind": "api", "base_url": "https://…/v1", "api_model": "…", "api_key_env": "OPENAI_API_KEY"}\''
        )
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ConfigError(f"--judge-model: {problems}") from None


def cli_store(args: argparse.Namespace) -> Any:
    from .store.factory import open_store

    return open_store(getattr(args, "store", None))


def _evaluation_id(store: Any, given: str | None) -> str:
    from .jobqueue import get_evaluation

    if given:
        return get_evaluation(store, given)["id"]
    newest = next((e for e in store.list_evaluations() if e.get("archived_at") is None), None)
    if newest is None:
        raise StorybenchError(
            f"no evaluations (archived ones aside) in {store.describe()} yet; "
            "start one with `storybench run CONFIG`, or name an archived one by its id"
        )
    return newest["id"]


def cmd_judge(args: argparse.Namespace) -> int:
    from . import audit
    from .access import cli_principal, require
    from .jobqueue import evaluation_config, get_evaluation
    from .judge import judge_evaluation

    me = cli_principal()
    require(me, "judge")
    store = cli_store(args)
    evaluation = get_evaluation(store, args.evaluation)
    config = evaluation_config(evaluation)
    specs = [parse_judge_model(m) for m in args.judge_model or []] or config.judge.judges()
    if not specs:
        print("no judge in the evaluation's config; judging with the bundled model", file=sys.stderr)
        specs = [parse_judge_model("bundled")]
    cfg = config.judge
    if args.attempts is not None:
        cfg = cfg.model_copy(update={"attempts": args.attempts})
        if not 1 <= args.attempts <= 10:
            raise ConfigError(f"--attempts {args.attempts} is out of range 1–10")

    def event(level: str, message: str, **fields: Any) -> None:
        store.append_event(evaluation["id"], level, message, **fields)
        print(terminal_safe(message if level == "info" else f"{level}: {message}"), file=sys.stderr)

    if args.queue:
        from .job_kinds import enqueue_job

        for spec in specs:
            job_id, created = enqueue_job(
                store, "judge", evaluation["id"], me, judge=spec, attempts=args.attempts
            )
            verb = "queued" if created else "already queued or running:"
            print(f"{verb} judge job {job_id} ({spec.display_name})", file=sys.stderr)
            print(job_id)
        return 0
    audit.record(store, me, "judge", evaluation["id"], {"judges": [s.display_name for s in specs]})
    summary = judge_evaluation(store, evaluation["id"], specs, cfg, event=event)
    return 1 if summary.failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from . import results

    store = cli_store(args)
    eid = _evaluation_id(store, args.evaluation)
    out = Path(args.out)
    if args.format == "csv":
        frame = results.responses_frame(
            store, eid, include_text=True, justifications=True, include_failed_responses=True
        )
        results.export_csv(frame, out)
    elif args.format == "json":
        results.export_json(store, eid, out, include_messages=args.messages)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(results.markdown_report(store, eid), encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from . import results
    from .progress import to_table

    store = cli_store(args)
    eid = _evaluation_id(store, args.evaluation)
    frame = results.responses_frame(store, eid)
    board = results.leaderboard(frame, judge=args.judge)
    if board.empty or board["n_scored"].sum() == 0:
        print(f"evaluation {eid}: no judged responses yet; run `storybench judge {eid}`", file=sys.stderr)
        return 0
    rows = []
    for r in board.itertuples(index=False):
        ci = f"{r.ci_low:.2f}–{r.ci_high:.2f}" if r.n_scored else "–"
        rows.append(
            {
                "rank": r.rank,
                "model": r.model_name,
                "overall": f"{r.overall:.2f}" if r.n_scored else "–",
                "95% CI": ci,
                "responses": r.n_responses,
                "failed judgements": r.n_failed_judgements,
                "words": f"{r.mean_words:.0f}",
                "tok/s": f"{r.mean_tokens_per_s:.1f}",
            }
        )
    print(f"evaluation {eid}" + (f" · judge {args.judge}" if args.judge else ""))
    print(to_table(rows))
    _print_judge_cards(store, frame, args.judge)
    return 0


def _print_judge_cards(store: Any, frame: Any, only: str | None) -> None:
    """Beside the ranking: each judge's reliability verdict, its warning, or that it is uncalibrated."""
    from .views.reliability import judge_cards

    judges = [only] if only else sorted({str(j) for j in frame.get("judge_model", []) if isinstance(j, str)})
    for card in judge_cards(store, judges):
        print(terminal_safe(card.headline), file=sys.stderr)
        if card.warning:
            print(terminal_safe(f"warning: {card.warning}"), file=sys.stderr)
        elif card.flag == "uncalibrated":
            print(
                terminal_safe(f"  calibrate it: storybench calibrate-judge --judge '{card.judge}'"),
                file=sys.stderr,
            )


def register(subparsers: Any) -> None:
    """Add `judge`, `export` and `leaderboard` to the storybench command line."""
    j = subparsers.add_parser("judge", help="judge the stored responses of an evaluation against the rubric")
    j.add_argument("evaluation", metavar="EVAL_ID", help="the evaluation whose responses to judge")
    j.add_argument(
        "--judge-model",
        action="append",
        metavar="MODEL",
        help="bundled | bundled:smollm2-135m-instruct | path:FILE.gguf | a JSON model spec; repeat for "
        "several judges (default: the evaluation's judge, else the bundled model)",
    )
    j.add_argument("--attempts", type=int, help="independent judgements per response (default: the config's)")
    j.add_argument(
        "--queue",
        action="store_true",
        help="queue a judge job for the worker (the dashboard's or `storybench worker`) instead of judging here; "
        "watch it with `storybench jobs`",
    )
    j.set_defaults(func=cmd_judge)

    e = subparsers.add_parser(
        "export", help="export responses with judgements (csv, json) or a Markdown report"
    )
    e.add_argument("evaluation", metavar="EVAL_ID", nargs="?", help="evaluation id (default: the newest)")
    e.add_argument(
        "--format", choices=["csv", "json", "md"], default="csv", help="file format (default: csv)"
    )
    e.add_argument("--out", required=True, metavar="PATH", help="file to write")
    e.add_argument(
        "--messages", action="store_true", help="json: include the messages sent with each response"
    )
    e.set_defaults(func=cmd_export)

    lb = subparsers.add_parser("leaderboard", help="models ranked by mean judge score with 95%% CIs")
    lb.add_argument("evaluation", metavar="EVAL_ID", nargs="?", help="evaluation id (default: the newest)")
    lb.add_argument("--judge", help="only this judge's scores (default: all judges averaged)")
    lb.set_defaults(func=cmd_leaderboard)
