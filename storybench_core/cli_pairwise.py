"""`storybench compare-judge EVAL_ID [EVAL_ID …]`: blind pairwise judging and Bradley–Terry ratings."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .store.base import Store
from .text_safety import terminal_safe

JUDGE_HELP = (
    "the judge: 'bundled', 'bundled:smollm2-135m-instruct', 'fake', a path to a .gguf file, 'hf:OWNER/REPO/FILE.gguf', the name of a model "
    "in the evaluation's config, or a model spec as JSON (default: the evaluation's configured judge)"
)


def register(subparsers: Any) -> None:
    """Add the compare-judge command to the CLI's subparsers."""
    p = subparsers.add_parser(
        "compare-judge",
        help="judge pairs of models' responses blind in both orders and print Bradley–Terry ratings",
        description="Judge two models' responses to the same brief, anonymised as A and B, in both orders; "
        "choose pairs adaptively within a call budget; print ratings with 95% bootstrap intervals. "
        "Several evaluation ids compare their models across evaluations.",
    )
    p.add_argument("evaluation", nargs="+", metavar="EVAL_ID", help="evaluation id(s)")
    p.add_argument("--judge", help=JUDGE_HELP)
    p.add_argument(
        "--budget",
        type=int,
        default=40,
        help="judge calls to spend at most, retries included; a pair takes two (default 40)",
    )
    p.add_argument(
        "--budget-chars", type=int, default=3000, help="both texts are clipped to this many characters"
    )
    p.add_argument("--max-tokens", type=int, default=160, help="judge answer length in tokens (default 160)")
    p.add_argument(
        "--format", choices=("table", "json"), default="table", help="output format (default: table)"
    )
    p.add_argument(
        "--queue",
        action="store_true",
        help="queue a pairwise job for the worker instead of judging here (one evaluation id); see `storybench jobs`",
    )
    p.set_defaults(func=cmd_compare_judge)


def parse_judge(text: str, models: list[Any] | None = None) -> Any:
    """A ModelSpec from the --judge argument."""
    from .config import ModelSpec

    value = text.strip()
    try:
        if value.startswith("{"):
            return ModelSpec.model_validate(json.loads(value))
        if value in ("bundled", "fake"):
            return ModelSpec.model_validate({"kind": value})
        if value.startswith("bundled:"):
            return ModelSpec(kind="bundled", builtin=value.removeprefix("bundled:"))
        if value.startswith("hf:"):
            repo, _, filename = value[3:].rpartition("/")
            if repo.count("/") < 1:
                raise ConfigError(f"--judge {value}: expected hf:OWNER/REPO/FILE.gguf")
            parts = repo.split("/")
            sub = "/".join(parts[2:]) or None
            return ModelSpec(kind="hf", repo_id="/".join(parts[:2]), filename=filename, subdirectory=sub)
        if value.endswith(".gguf"):
            return ModelSpec(kind="path", path=str(Path(value).expanduser()))
    except ConfigError:
        raise
    except Exception as exc:  # pydantic ValidationError, JSONDecodeError
        raise ConfigError(f"--judge {value!r} is not a valid model: {exc}") from None
    for spec in models or []:
        if spec.display_name == value:
            return spec
    known = ", ".join(s.display_name for s in models or []) or "none"
    raise ConfigError(f"--judge {value!r}: not a model I know ({JUDGE_HELP}; models in the config: {known})")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value)


def cmd_compare_judge(args: argparse.Namespace) -> int:
    from . import audit, jobs, pairwise
    from .access import cli_principal, require
    from .cli import cli_store
    from .progress import to_table

    me = cli_principal()
    require(me, "judge")
    store: Store = cli_store(args)
    configs = [jobs.evaluation_config(jobs.get_evaluation(store, eid)) for eid in args.evaluation]
    spec = parse_judge(args.judge, [m for c in configs for m in c.models]) if args.judge else None
    if args.queue:
        from .errors import JobError
        from .job_kinds import enqueue_job

        if len(args.evaluation) != 1:
            raise JobError("--queue takes one evaluation id; compare across evaluations without --queue")
        job_id, created = enqueue_job(
            store,
            "pairwise",
            args.evaluation[0],
            me,
            judge=spec,
            budget=args.budget,
            budget_chars=args.budget_chars,
            max_tokens=args.max_tokens,
        )
        print(
            f"{'queued' if created else 'already queued or running:'} pairwise job {job_id}", file=sys.stderr
        )
        print(job_id)
        return 0
    for eid in args.evaluation:
        audit.record(store, me, "judge", eid, {"pairwise": True, "judge": args.judge or "configured"})

    def event(level: str, message: str, **_: Any) -> None:
        if level != "info" or not message.startswith("pairwise verdict for"):
            print(terminal_safe(f"{level}: {message}" if level != "info" else message), file=sys.stderr)

    summary = pairwise.compare_judge_evaluation(
        store,
        args.evaluation if len(args.evaluation) > 1 else args.evaluation[0],
        spec,
        budget=args.budget,
        budget_chars=args.budget_chars,
        max_tokens=args.max_tokens,
        event=event,
    )
    if args.format == "json":
        out = {
            "judge": summary.judge,
            "scope": summary.scope,
            "calls": summary.calls,
            "verdicts": summary.verdicts,
            "failed": summary.failed,
            "stop_reason": summary.stop_reason,
            "warnings": summary.warnings,
            "ratings": summary.ratings.to_dict(orient="records"),
            "position_bias": summary.position_bias.to_dict(orient="records"),
        }
        print(json.dumps(out, indent=2, default=str))
        return 0
    rows = [{k: _fmt(v) for k, v in r.items()} for r in summary.ratings.to_dict(orient="records")]
    print(
        terminal_safe(
            f"pairwise ratings by {summary.judge} ({summary.scope}); Elo-like scale, 95% bootstrap CI"
        )
    )
    print(to_table(rows))
    for r in summary.position_bias.to_dict(orient="records"):
        print(
            terminal_safe(f"position bias of {r['judge']}: ")
            + f"first-shown text wins {_fmt(r['first_win_rate'])} of decided "
            f"verdicts; both orders agree on {_fmt(r['consistent_rate'])} of {r['pairs_both_orders']} pairs"
        )
    print(
        f"{summary.calls} judge calls, {summary.verdicts} new verdicts ({summary.failed} failed); "
        f"stopped: {summary.stop_reason}"
    )
    return 0
