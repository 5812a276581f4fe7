"""Execute an evaluation: plan its tasks, load each model once, run its pending conversations.

The tasks (tasks.py) are model × sequence × run × prompt; the turns of one
(model, sequence, run) are one conversation. For each model in turn the
runner loads it (one model at a time, `ModelPool`), chooses how many
conversations to decode together (widths.py) and hands every pending
conversation of that model to the scheduler (scheduler.py), which stores
each response the moment it exists (an upsert on its task key): a crash
loses at most the responses being generated, and a resume does only what is
missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from .backends.base import ModelBackend
from .backends.registry import create_backend
from .config import GenerationSettingsConfig, ModelSpec, RunConfig
from .errors import StopRequested, StorybenchError
from .execution import EvaluationRun, RunHooks, RunSummary, now_utc
from .scheduler import Grouping, Scheduler
from .stopping import stop_check
from .store.base import Doc, Store
from .tasks import (
    LIVE_TEXT_CHARS,
    SEED_RUN_STRIDE,
    FittedMessages,
    Task,
    fit_to_context,
    group_conversations,
    live_text,
    plan_tasks,
    seed_for,
    task_key,
)
from .widths import width_for

log = logging.getLogger(__name__)

__all__ = [
    "LIVE_TEXT_CHARS",
    "SEED_RUN_STRIDE",
    "FittedMessages",
    "ModelPool",
    "RunHooks",
    "RunSummary",
    "Runner",
    "Task",
    "fit_to_context",
    "group_conversations",
    "live_text",
    "now_utc",
    "plan_tasks",
    "seed_for",
    "task_key",
]


class ModelPool:
    """Holds at most one loaded model; switching models unloads the previous one."""

    def __init__(
        self, factory: Callable[[ModelSpec, GenerationSettingsConfig], ModelBackend] = create_backend
    ):
        self._factory = factory
        self._key: str | None = None
        self._backend: ModelBackend | None = None
        self.loads = 0

    @staticmethod
    def _key_for(spec: ModelSpec, gen: GenerationSettingsConfig) -> str:
        # Only what changes the loaded instance: the model and its memory settings.
        return f"{spec.model_dump_json()}|{gen.n_ctx}|{gen.vram_limit_percent}|{gen.parallel_runs}"

    def get(self, spec: ModelSpec, gen: GenerationSettingsConfig) -> tuple[ModelBackend, bool]:
        """The backend for spec, and whether it was loaded now (False: reused)."""
        key = self._key_for(spec, gen)
        if self._backend is not None and key == self._key:
            return self._backend, False
        self.release()
        self._backend = self._factory(spec, gen)
        self._key = key
        self.loads += 1
        return self._backend, True

    @property
    def loaded_name(self) -> str | None:
        return self._backend.name if self._backend is not None else None

    def release(self) -> None:
        if self._backend is not None:
            try:
                self._backend.close()
            finally:
                self._backend, self._key = None, None


class Runner:
    """Executes the missing tasks of one evaluation against a store.

    `group` says which conversations may be decoded together: "evaluation" (every pending
    one of a model, the default) or "sequence" (the runs of one sequence at a time).
    `measure_width=False` skips the width measurement (width_probe.py).
    """

    def __init__(
        self,
        store: Store,
        pool: ModelPool | None = None,
        hooks: RunHooks | None = None,
        *,
        group: Grouping = "evaluation",
        measure_width: bool = True,
    ):
        self.store = store
        self.pool = pool or ModelPool()
        self.hooks = hooks or RunHooks()
        self.group = group
        self.measure_width = measure_width

    def execute(
        self,
        evaluation: Doc,
        config: RunConfig,
        *,
        only: Collection[tuple[int, str, int]] | None = None,
    ) -> RunSummary:
        """The missing tasks of the evaluation; with `only` (model index, sequence, run), of those
        conversations alone (the share a cluster executor hands one slot, executors/ray_slot.py)."""
        eid = evaluation["id"]
        tasks = [t for t in plan_tasks(config) if only is None or t.conversation in only]
        done = self.store.completed_task_keys(eid)
        summary = RunSummary(skipped_existing=sum(1 for t in tasks if t.key(eid) in done))
        run = EvaluationRun(
            self.store, eid, config, self.hooks, summary, done, len(tasks), finished=summary.skipped_existing
        )
        if summary.skipped_existing:
            self.hooks.event(
                "info", f"resuming: {summary.skipped_existing} of {len(tasks)} tasks already stored"
            )
        conversations = group_conversations(tasks)
        for mi, spec in enumerate(config.models):
            todo = [
                c for c in conversations if c[0].model_index == mi and any(t.key(eid) not in done for t in c)
            ]
            if not todo:
                continue
            if self.hooks.should_stop():
                summary.stopped = True
                break
            try:
                backend = self._load(spec, config.generation)
                if backend is None:
                    for conv in todo:
                        for t in conv:
                            if t.key(eid) not in done:
                                run.store_failure(spec, t, "model could not be loaded (see console)")
                    continue
                width = width_for(
                    spec,
                    backend,
                    config.generation,
                    self._together(todo),
                    self.hooks.event,
                    self.hooks.should_stop,
                    measure=self.measure_width and self.group == "evaluation",
                )
                Scheduler(run, spec, backend, width, self.group).execute(todo)
            except StopRequested:  # a Stop, during a load (a download can take minutes) or a turn
                summary.stopped = True
                break
        return summary

    def _together(self, todo: list[list[Task]]) -> int:
        """How many of these conversations could be decoded together at most (the grouping's limit)."""
        if self.group == "evaluation":
            return len(todo)
        per_sequence: dict[str, int] = {}
        for conv in todo:
            per_sequence[conv[0].sequence] = per_sequence.get(conv[0].sequence, 0) + 1
        return max(per_sequence.values(), default=0)

    def _load(self, spec: ModelSpec, gen: GenerationSettingsConfig) -> ModelBackend | None:
        name = spec.display_name
        self.hooks.event("info", f"loading model {name}")
        try:
            with stop_check(self.hooks.should_stop):  # a download inside the load asks it (hub.py)
                backend, fresh = self.pool.get(spec, gen)
        except StopRequested:
            self.hooks.event("warning", f"stopped while loading model {name}")
            raise
        except StorybenchError as exc:
            self.hooks.event("error", f"cannot load model {name}: {exc}")
            return None
        note = getattr(backend, "load_note", "")
        self.hooks.event(
            "info", f"{'loaded' if fresh else 'reusing loaded'} model {name}" + (f" ({note})" if note else "")
        )
        return backend
