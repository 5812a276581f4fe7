"""What the Run page shows: one evaluation's progress, its console and the queue/history table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import pandas as pd

from ..store.base import ACTIVE_STATUSES, Doc, Store

LIVE_STATUSES = ("running", "stopping")
StatusState = Literal["running", "complete", "error"]


@dataclass(frozen=True)
class RunView:
    """One evaluation as the Run page shows it."""

    evaluation_id: str
    name: str
    status: str
    config_hash: str
    done: int
    failed: int
    total: int
    elapsed_s: float | None
    eta_s: float | None
    tokens_per_s: float | None
    model_name: str
    sequence: str
    run: int | None
    prompt_label: str
    partial_text: str
    worker_id: str | None
    error: str | None
    batch_width: int = 1  # runs generated together right now (1: one after another)
    batch_runs: tuple[int, ...] = ()
    run_tokens_per_s: dict[int, float] = field(default_factory=dict)

    @property
    def speed_label(self) -> str:
        """What the tokens/s figure is: one run's, or every run's of a batch together."""
        return f"Tokens/s ({self.batch_width} runs together)" if self.batch_width > 1 else "Tokens/s"

    @property
    def per_run_speed(self) -> str:
        """'run 1: 14.2 · run 2: 14.0 tok/s' for a batch, '' otherwise."""
        if self.batch_width <= 1 or not self.run_tokens_per_s:
            return ""
        parts = [f"run {run}: {tps:.1f}" for run, tps in sorted(self.run_tokens_per_s.items())]
        return "per run: " + " · ".join(parts) + " tok/s"

    @property
    def fraction(self) -> float:
        """Finished share of the tasks, 0.0–1.0 (failed tasks count as finished)."""
        return min(1.0, (self.done + self.failed) / self.total) if self.total else 0.0

    @property
    def percent(self) -> int:
        return round(self.fraction * 100)

    @property
    def is_live(self) -> bool:
        """True while a worker is generating for it."""
        return self.status in LIVE_STATUSES

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def progress_label(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.done + self.failed} / {self.total} tasks ({self.percent}%{failed})"

    @property
    def current_label(self) -> str:
        """ "model · sequence · run 2 · prompt 3 (name)", or '' before the first task."""
        if not self.model_name:
            return ""
        parts = [self.model_name, self.sequence]
        if len(self.batch_runs) > 1:
            parts.append("runs " + ", ".join(str(r) for r in self.batch_runs) + " together")
        elif self.run is not None:
            parts.append(f"run {self.run}")
        if self.prompt_label:
            parts.append(self.prompt_label)
        return " · ".join(p for p in parts if p)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def run_view(doc: Doc, now: datetime | None = None) -> RunView:
    """Progress, elapsed time, ETA and the current task of one evaluation document."""
    now = now or datetime.now(UTC)
    progress = doc.get("progress") or {}
    total = int(doc.get("total_tasks") or progress.get("tasks_total") or 0)
    done = int(doc.get("completed_tasks") or 0)
    failed = int(doc.get("failed_tasks") or 0)
    started = _aware(doc.get("started_at"))
    finished = _aware(doc.get("finished_at"))
    elapsed = None
    if started is not None:
        end = finished or (
            now if doc.get("status") in LIVE_STATUSES else _aware(doc.get("heartbeat_at")) or now
        )
        elapsed = max(0.0, (end - started).total_seconds())
    eta = estimate_remaining_s(elapsed, done + failed, total) if doc.get("status") in LIVE_STATUSES else None
    prompt_index = progress.get("prompt_index")
    prompt_label = ""
    if prompt_index is not None:
        name = progress.get("prompt_name") or ""
        prompt_label = f"prompt {int(prompt_index) + 1}" + (f" ({name})" if name else "")
    tps = progress.get("tokens_per_s")
    width = int(progress.get("batch_width") or 1)
    if width > 1 and progress.get("aggregate_tokens_per_s") is not None:
        tps = progress["aggregate_tokens_per_s"]
    per_run = {int(k): float(v) for k, v in (progress.get("run_tokens_per_s") or {}).items()}
    return RunView(
        evaluation_id=doc["id"],
        name=doc.get("name") or doc["id"],
        status=doc.get("status") or "queued",
        config_hash=doc.get("config_hash") or "",
        done=done,
        failed=failed,
        total=total,
        elapsed_s=elapsed,
        eta_s=eta,
        tokens_per_s=float(tps) if tps is not None else None,
        model_name=progress.get("model_name") or "",
        sequence=progress.get("sequence") or "",
        run=progress.get("run"),
        prompt_label=prompt_label,
        partial_text=progress.get("partial_text") or "",
        worker_id=doc.get("worker_id"),
        error=doc.get("error"),
        batch_width=width,
        batch_runs=tuple(int(r) for r in progress.get("batch_runs") or ()),
        run_tokens_per_s=per_run,
    )


def estimate_remaining_s(elapsed_s: float | None, finished: int, total: int) -> float | None:
    """Remaining seconds at the average pace so far; None until one task has finished."""
    if elapsed_s is None or finished <= 0 or total <= 0:
        return None
    return max(0.0, elapsed_s / finished * (total - finished))


def format_duration(seconds: float | None) -> str:
    """12 s, 3 min 05 s, 1 h 02 min; an em dash when unknown."""
    if seconds is None:
        return "—"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def refresh_interval_s(active: bool) -> float:
    """How often the Run page re-reads the store: fast while a run is queued or live."""
    return 1.0 if active else 5.0


def status_state(status: str) -> StatusState:
    """The st.status state for an evaluation status."""
    if status in ("queued", "running", "stopping"):
        return "running"
    if status == "failed":
        return "error"
    return "complete"


def allowed_actions(status: str) -> frozenset[str]:
    """Which of stop / resume / reset make sense for an evaluation in this status."""
    return frozenset(
        {
            "queued": {"stop"},
            "running": {"stop", "reset"},
            "stopping": {"reset"},
            "stopped": {"resume"},
            "failed": {"resume"},
            "completed": set(),
        }.get(status, set())
    )


# --- the console ------------------------------------------------------------------


def console_line(event: Doc) -> str:
    """'12:03:04 WARNING message' (local time of the server)."""
    ts = _aware(event.get("ts"))
    clock = ts.astimezone().strftime("%H:%M:%S") if ts else "--:--:--"
    level = (event.get("level") or "info").upper()
    tag = "" if level == "INFO" else f"{level} "
    return f"{clock} {tag}{event.get('message', '')}"


@dataclass
class ConsoleBuffer:
    """The console of one evaluation, read incrementally: a new viewer reads it all once."""

    evaluation_id: str
    lines: list[str] = field(default_factory=list)
    last_seq: int = 0

    def refresh(self, store: Store) -> list[str]:
        """Append the events written since the last refresh; returns all lines."""
        for event in store.list_events(self.evaluation_id, after_seq=self.last_seq):
            self.lines.append(console_line(event))
            self.last_seq = max(self.last_seq, int(event.get("seq") or 0))
        return self.lines

    @property
    def text(self) -> str:
        return "\n".join(self.lines) if self.lines else "(no console output yet)"

    def height(self, max_lines: int = 14, line_px: int = 22) -> int | Literal["content"]:
        """A short console takes its own height; a long one scrolls in a fixed box."""
        return "content" if len(self.lines) <= max_lines else max_lines * line_px + 16


# --- choosing and listing evaluations --------------------------------------------------


def watched_evaluation(docs: Sequence[Doc], selected_id: str | None = None) -> Doc | None:
    """The evaluation to show: the selected one, else the one running, else the next queued, else the newest.

    `docs` is newest first (as Store.list_evaluations returns them).
    """
    if selected_id:
        for doc in docs:
            if doc["id"] == selected_id:
                return doc
    for statuses in (LIVE_STATUSES, ("queued",)):
        matching = [d for d in docs if d.get("status") in statuses]
        if matching:
            return matching[-1]
    return docs[0] if docs else None


HISTORY_COLUMNS = ["name", "status", "tasks", "failed", "created", "duration", "models", "sequences", "id"]


def evaluations_frame(docs: Iterable[Doc], now: datetime | None = None) -> pd.DataFrame:
    """The queue and history table, newest first."""
    rows = []
    for doc in docs:
        view = run_view(doc, now)
        # A brief document (no config) carries the summary enqueue wrote; older ones only the config.
        config = doc.get("summary") or doc.get("config") or {}
        created = _aware(doc.get("created_at"))
        rows.append(
            {
                "name": view.name,
                "status": view.status + (" (archived)" if doc.get("archived_at") is not None else ""),
                "tasks": f"{view.done + view.failed}/{view.total}",
                "failed": view.failed,
                "created": created.astimezone().strftime("%Y-%m-%d %H:%M") if created else "",
                "duration": format_duration(view.elapsed_s),
                "models": len(config.get("models") or []),  # names (summary) or specs (config)
                "sequences": ", ".join(config.get("sequences") or []),
                "id": view.evaluation_id,
            }
        )
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def evaluation_label(doc: Doc) -> str:
    """'name · created · id' for pickers (no status: a picker's labels should not change under it)."""
    created = _aware(doc.get("created_at"))
    when = f" · {created.astimezone().strftime('%Y-%m-%d %H:%M')}" if created else ""
    return f"{doc.get('name') or doc['id']}{when} · {doc['id']}"


def workers_seen(docs: Iterable[Doc], own_worker_id: str | None) -> list[str]:
    """Ids of other workers (e.g. a `storybench worker` process) running evaluations now."""
    return sorted(
        {
            d["worker_id"]
            for d in docs
            if d.get("status") in LIVE_STATUSES and d.get("worker_id") and d.get("worker_id") != own_worker_id
        }
    )
