"""auto_evaluate: the worker's hook that judges each response as it is stored."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from . import catalog
from .backends.base import ModelBackend
from .backends.registry import create_backend
from .config import ModelSpec, RunConfig
from .errors import StopRequested, StorybenchError
from .judge import (
    EventFn,
    describe_response,
    judge_in_chunks,
    judge_width,
    judgement_line,
    store_judgement,
)
from .runner import ModelPool, plan_tasks
from .store.base import Doc, Store

log = logging.getLogger(__name__)

# Kinds that load weights into this process (and so share the one-model pool).
# API (and the scripted fake) judges are cheap to hold beside a loaded candidate.
LOCAL_KINDS = frozenset({"bundled", "hf", "path"})


class AutoJudge:
    """The worker's on_response hook for `auto_evaluate`.

    Per judge, per response:
    - the judge *is* the candidate model (same local model): judged at once on the
      loaded candidate, no reload;
    - an API (or fake) judge: judged at once, its client held beside the candidate;
    - a different local model: the worker holds one model at a time, so loading
      the judge per response would reload both models every task. Such responses
      are queued and judged when the candidate model's last task is stored; the
      runner then loads the next candidate. Responses still queued when a run
      ends early (stop, failed last task) are judged by `flush()` or later by
      `storybench judge`, which skips what is already judged.
    """

    def __init__(self, store: Store, config: RunConfig, evaluation_id: str, pool: ModelPool, event: EventFn):
        self.store = store
        self.config = config
        self.cfg = config.judge
        self.evaluation_id = evaluation_id
        self.pool = pool
        self.event = event
        self.rubric = catalog.load_rubric()
        self.queue: list[Doc] = []
        self._remote: dict[str, ModelBackend] = {}
        self._announced: set[str] = set()
        self._order = {t.key(evaluation_id): (t.model_name, i) for i, t in enumerate(plan_tasks(config))}
        self._stop_checked = 0.0
        self._stopping = False

    # -- helpers
    @staticmethod
    def same_model(spec: ModelSpec, response_doc: Doc) -> bool:
        return spec.kind in LOCAL_KINDS and spec.ref() == response_doc.get("model_ref")

    def _stopping_now(self) -> bool:
        now = time.monotonic()
        if now - self._stop_checked >= 0.5:
            self._stop_checked = now
            current = self.store.get_evaluation(self.evaluation_id)
            self._stopping = current is None or current.get("status") == "stopping"
        return self._stopping

    def _on_token(self, _piece: str) -> None:
        if self._stopping_now():
            raise StopRequested()

    def _judge(self, backend: ModelBackend, spec: ModelSpec, response: Doc) -> None:
        self._judge_many(backend, spec, [response])

    def _judge_many(self, backend: ModelBackend, spec: ModelSpec, responses: Sequence[Doc]) -> None:
        """Every missing attempt of these responses, together where the backend can batch."""
        name = spec.display_name
        todo: list[tuple[Doc, int]] = []
        for response in responses:
            done = {
                int(j["attempt"])
                for j in self.store.list_judgements(response_id=response["id"], judge_model=name)
                if j.get("rubric_hash") == self.rubric.rubric_hash
            }
            todo += [(response, a) for a in range(1, self.cfg.attempts + 1) if a not in done]
        width, _reason = judge_width(backend, self.config.generation, len(todo))
        for _i, response, judgement in judge_in_chunks(
            backend, name, todo, self.rubric, self.cfg, width, on_token=self._on_token
        ):
            if store_judgement(self.store, judgement):
                self.event(*judgement_line(judgement, response))

    def _remote_backend(self, spec: ModelSpec) -> ModelBackend:
        key = spec.model_dump_json()
        if key not in self._remote:
            self._remote[key] = create_backend(spec, self.config.generation)
        return self._remote[key]

    def _model_done(self, response: Doc) -> bool:
        """True when no later task of this response's model is still missing."""
        model, index = self._order.get(response.get("task_key", ""), (response.get("model_name"), -1))
        later = [k for k, (m, i) in self._order.items() if m == model and i > index]
        if not later:
            return True
        completed = self.store.completed_task_keys(self.evaluation_id)
        return all(k in completed for k in later)

    # -- the hook
    def __call__(self, response: Doc, candidate: ModelBackend) -> None:
        self.on_responses([response], candidate)

    def on_responses(self, responses: Sequence[Doc], candidate: ModelBackend) -> None:
        """Judge freshly stored responses (a batch's runs together where the judge can batch)."""
        if not responses or self._stopping_now():
            return
        deferred = False
        for spec in self.cfg.judges():
            try:
                if spec.kind not in LOCAL_KINDS:
                    self._judge_many(self._remote_backend(spec), spec, responses)
                    continue
                own = [r for r in responses if self.same_model(spec, r)]
                if own:
                    self._judge_many(candidate, spec, own)
                if len(own) < len(responses):
                    deferred = True
                    if spec.display_name not in self._announced:
                        self._announced.add(spec.display_name)
                        self.event(
                            "info",
                            f"judge {spec.display_name} is a different local model: responses are queued and "
                            f"judged after each candidate model's tasks are done (one model loaded at a time)",
                        )
            except StopRequested:
                raise
            except StorybenchError as exc:
                self.event(
                    "error",
                    f"judge {spec.display_name} unavailable for {describe_response(responses[0])}: {exc}",
                )
            except Exception as exc:  # a judge bug must not end the evaluation
                log.exception("auto-judge crashed on %s", responses[0].get("task_key"))
                self.event(
                    "error",
                    f"judge {spec.display_name} crashed: {type(exc).__name__}: {exc} (see the log file)",
                )
        if deferred:
            self.queue.extend(responses)
            if self._model_done(responses[-1]):
                self.flush()

    def flush(self) -> int:
        """Judge the queued responses with every different-local-model judge; returns how many were queued."""
        queued, self.queue = self.queue, []
        if not queued:
            return 0
        if self._stopping_now():
            self.event(
                "warning", f"{len(queued)} queued response(s) left unjudged (stop); run `storybench judge`"
            )
            return len(queued)
        specs = [s for s in self.cfg.judges() if s.kind in LOCAL_KINDS]
        for spec in specs:
            todo = [r for r in queued if not self.same_model(spec, r)]
            if not todo:
                continue
            self.event("info", f"loading judge {spec.display_name} for {len(todo)} queued response(s)")
            try:
                backend, _fresh = self.pool.get(spec, self.config.generation)
                self._judge_many(backend, spec, todo)
            except StopRequested:
                raise
            except StorybenchError as exc:
                self.event("error", f"judge {spec.display_name}: {exc}; judge later with `storybench judge`")
        return len(queued)

    def close(self) -> None:
        for backend in self._remote.values():
            backend.close()
        self._remote.clear()


def auto_judge_hook(
    store: Store, config: RunConfig, evaluation_id: str, pool: ModelPool, event: EventFn
) -> AutoJudge | None:
    """The on_response hook for an `auto_evaluate` run (None when there is nothing to judge with)."""
    if not config.auto_evaluate or not config.judge.judges():
        return None
    return AutoJudge(store, config, evaluation_id, pool, event)
