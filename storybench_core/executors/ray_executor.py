"""Run one evaluation over a Ray cluster: one actor per slot, whole conversations, ray.wait.

The driver is the Worker's thread (jobs.py), which holds the evaluation's lease and heartbeats it.
It connects to a running cluster (never starts one), creates one SlotActor per GPU (or per CPU slot
where the cluster has no GPU), hands out shares of whole conversations (dispatch.py), and relays
each slot's console lines and live progress through the Worker's hooks. It dispatches with
`ray.wait` on the shares in flight (ActorPool does not survive a dead actor): when a slot dies
with its node, the stored task keys are read back from the store and only the conversations with
turns still missing are handed out again; their stored turns are not redone. Stop: the slots read
the stop flag from the store themselves, the driver also tells each one, and after a grace period
cancels what is still running; the actors are killed when the evaluation ends, whatever the end.
"""

from __future__ import annotations

import importlib
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import RunConfig
from ..errors import ConfigError, JobError, LeaseLost, StorybenchError
from ..execution import RunHooks, RunSummary
from ..store.base import Doc, Lease, Store
from ..tasks import group_conversations, plan_tasks
from .dispatch import ConversationId, DispatchPlan, Share
from .ray_slot import Guard, ShareResult, SlotActor, StoreLocation
from .settings import RAY_ADDRESS_ENV, RAY_INSTALL_HINT

log = logging.getLogger(__name__)

POLL_S = 0.25  # the longest the driver waits before looking at Stop, progress and free slots again
DRAIN_EVERY_S = 0.5  # how often each busy slot's console lines and progress are collected
STOP_GRACE_S = 10.0  # after a Stop, how long slots may take to return what they stored
SLOT_START_S = 120.0  # how long a slot may take to start (a worker process, the store opened)

_connect_lock = threading.Lock()
_connected_to: str | None = None


def import_ray() -> Any:
    """The ray module, or a ConfigError saying how to install the optional extra."""
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise ConfigError(
            f"{RAY_ADDRESS_ENV} is set but Ray is not installed: install the optional extra "
            f"({RAY_INSTALL_HINT}), or unset {RAY_ADDRESS_ENV} to run evaluations in this process"
        ) from exc


def connect(address: str) -> Any:
    """This process's connection to the running cluster at `address` (made once, behind a lock).

    Never starts a cluster: one started from a Streamlit script thread would die with the thread.
    """
    global _connected_to
    if address.strip().lower() in ("", "local"):
        raise ConfigError(
            f"{RAY_ADDRESS_ENV}={address!r}: name a running cluster (HEAD:6379 as `ray start --head` "
            "prints it, or auto); Storybench does not start a Ray cluster itself"
        )
    ray = import_ray()
    _check_reachable(address)
    with _connect_lock:
        if ray.is_initialized():
            if _connected_to not in (None, address):
                raise JobError(
                    f"this process is connected to the Ray cluster at {_connected_to}, not {address}; "
                    "restart the worker to change clusters"
                )
            return ray
        try:
            ray.init(
                address=address, namespace="storybench", log_to_driver=False, logging_level=logging.WARNING
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise JobError(
                f"cannot reach the Ray cluster at {address}: {exc}. Start it with `ray start --head` "
                f"(and `ray start --address=HEAD:PORT` on the other machines), or unset {RAY_ADDRESS_ENV}"
            ) from exc
        _connected_to = address
        return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A JobError at once when nothing listens at host:port (ray.init would retry for minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # `auto`, or an address form Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise JobError(
            f"nothing answers at the Ray address {address} ({exc.strerror or exc}): start the head with "
            f"`ray start --head` (it prints HEAD:PORT), check the firewall, or unset {RAY_ADDRESS_ENV}"
        ) from exc


@dataclass
class _Slot:
    """The driver's view of one actor: where it runs, what it holds, what it is doing."""

    index: int
    handle: Any
    label: str = ""
    node_id: str = ""
    model: int | None = None  # the model it loaded last (None: none yet)
    share: Share | None = None
    ref: Any = None  # the running share
    drain_ref: Any = None
    drained_at: float = 0.0
    progress: dict[str, Any] | None = None


class RayExecutor:
    """Executes one claimed evaluation on the Ray cluster at `address`.

    `max_slots` caps the actors (default: every free GPU, else every free CPU slot); `max_share`
    caps the conversations in one dispatch (default: guided, see dispatch.py).
    """

    def __init__(
        self,
        address: str,
        *,
        max_slots: int | None = None,
        max_share: int | None = None,
        poll_s: float = POLL_S,
    ) -> None:
        self.address = address
        self.max_slots = max_slots
        self.max_share = max_share
        self.poll_s = poll_s
        self.nodes_used: Counter[str] = Counter()  # responses stored per node id (the last execution)

    def execute(
        self, store: Store, hooks: RunHooks, evaluation: Doc, config: RunConfig, *, lease: Lease, guard: Guard
    ) -> RunSummary:
        ray = connect(self.address)
        eid = str(evaluation["id"])
        tasks = plan_tasks(config)
        keys_of: dict[ConversationId, list[str]] = {
            c[0].conversation: [t.key(eid) for t in c] for c in group_conversations(tasks)
        }
        all_keys = {k for keys in keys_of.values() for k in keys}
        known = store.completed_task_keys(eid) & all_keys
        summary = RunSummary(skipped_existing=len(known))
        if known:
            hooks.event("info", f"resuming: {len(known)} of {len(tasks)} tasks already stored")
        pending = [c for c, keys in keys_of.items() if any(k not in known for k in keys)]
        self.nodes_used = Counter()
        if not pending:
            return summary
        if hooks.should_stop():
            summary.stopped = True
            return summary
        run = _Drive(self, ray, store, hooks, eid, config, keys_of, known, summary, len(tasks))
        slots = run.start_slots(StoreLocation.of(store), evaluation, lease, guard, len(pending))
        try:
            run.drive(DispatchPlan(pending, len(slots), max_share=self.max_share))
            run.final_progress()
        finally:
            for slot in slots:
                _quietly(ray.kill, slot.handle, no_restart=True)
        return summary


class _Drive:
    """One execution's driver loop and its state (the slots, the task keys known to be stored)."""

    def __init__(
        self,
        executor: RayExecutor,
        ray: Any,
        store: Store,
        hooks: RunHooks,
        eid: str,
        config: RunConfig,
        keys_of: dict[ConversationId, list[str]],
        known: set[str],
        summary: RunSummary,
        total: int,
    ) -> None:
        self.x, self.ray, self.store, self.hooks = executor, ray, store, hooks
        self.eid, self.config, self.keys_of, self.known = eid, config, keys_of, known
        self.summary, self.total = summary, total
        self.finished = len(known)  # tasks stored or failed, as progress counts them
        self.slots: list[_Slot] = []
        self.last_progress: dict[str, Any] = {}

    # --- the slots ------------------------------------------------------------------------
    def start_slots(
        self, location: StoreLocation, evaluation: Doc, lease: Lease, guard: Guard, wanted: int
    ) -> list[_Slot]:
        ray = self.ray
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        free = ray.available_resources()
        gpu = sum(int(n["Resources"].get("GPU", 0)) for n in nodes) > 0
        count = min(int(free.get("GPU", 0)), int(free.get("CPU", 0))) if gpu else int(free.get("CPU", 0))
        count = min(count, wanted, self.x.max_slots or count)
        if count < 1:
            raise JobError(
                f"the Ray cluster at {self.x.address} has no free {'GPU' if gpu else 'CPU'} slot "
                f"({len(nodes)} node(s)); start more nodes (`ray start --address=HEAD:PORT`) or wait for other jobs"
            )
        actor = ray.remote(SlotActor).options(
            num_cpus=1,
            num_gpus=1 if gpu else 0,
            max_concurrency=2,  # `run` in one thread; `drain` and `stop` beside it
            max_restarts=0,  # a dead slot is replaced by re-dispatching its conversations, not by Ray
            max_task_retries=0,
            scheduling_strategy="SPREAD",
        )
        handles = [actor.remote(i + 1, location, evaluation, self.config, lease, guard) for i in range(count)]
        refs = [h.node_id.remote() for h in handles]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=SLOT_START_S)
        address = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in nodes}
        errors: list[str] = []
        for i, (handle, ref) in enumerate(zip(handles, refs, strict=True)):
            try:
                if ref not in ready:
                    raise TimeoutError(f"not started within {SLOT_START_S:.0f} s")
                node = str(ray.get(ref))
            except Exception as exc:
                errors.append(f"slot {i + 1}: {_cause(exc)}")
                _quietly(ray.kill, handle, no_restart=True)
                continue
            label = f"slot {i + 1} ({address.get(node, '?')}, node {node[:8]})"
            self.slots.append(_Slot(i + 1, handle, label, node))
        if not self.slots:
            raise JobError(f"no Ray slot could start on {self.x.address}: " + "; ".join(errors))
        for line in errors:
            self.hooks.event("warning", f"Ray {line}; going on without it")
        nodes_used = len({s.node_id for s in self.slots})
        self.hooks.event(
            "info",
            f"Ray cluster {self.x.address}: {len(self.slots)} {'GPU' if gpu else 'CPU'} slot(s) on {nodes_used} "
            f"node(s) for {wanted} conversation(s)",
            ray_slots=len(self.slots),
        )
        return self.slots

    # --- the loop -----------------------------------------------------------------------------
    def drive(self, plan: DispatchPlan) -> None:
        stopping_since: float | None = None
        while True:
            if stopping_since is None and self._stop_requested():
                stopping_since = time.monotonic()
                self.summary.stopped = True
                busy = [s for s in self.slots if s.ref is not None]
                for slot in busy:
                    _quietly(slot.handle.stop.remote)
                self.hooks.event("warning", f"stop: {len(busy)} Ray slot(s) asked to stop")
            if stopping_since is None:
                self._dispatch(plan)
            busy = [s for s in self.slots if s.ref is not None]
            if not busy:
                if plan.remaining and stopping_since is None:
                    raise JobError(
                        f"every Ray slot died; {plan.remaining} conversation(s) are not done. The stored "
                        "responses are kept: Resume finishes what is missing once the cluster is back"
                    )
                break
            if stopping_since is not None and time.monotonic() - stopping_since > STOP_GRACE_S:
                for slot in busy:
                    _quietly(self.ray.cancel, slot.ref)
                    self.hooks.event(
                        "warning", f"{slot.label} did not stop within {STOP_GRACE_S:.0f} s: cancelled"
                    )
                break
            ready, _ = self.ray.wait([s.ref for s in busy], num_returns=1, timeout=self.x.poll_s)
            for slot in busy:
                if slot.ref in ready:
                    self._collect(slot, plan)
            self._relay()
        if not self.summary.stopped and self.config.auto_evaluate:
            for slot in self.slots:
                try:
                    self._events(slot, self.ray.get(slot.handle.flush_judge.remote()))
                except self.ray.exceptions.RayError as exc:
                    self.hooks.event(
                        "warning", f"{slot.label} could not judge its queued responses: {_cause(exc)}"
                    )

    def _stop_requested(self) -> bool:
        return bool(self.hooks.should_stop())  # LeaseLost propagates: the Worker gives the evaluation up

    def _dispatch(self, plan: DispatchPlan) -> None:
        """A share for every free slot: those that hold a model with pending conversations first."""
        free = [s for s in self.slots if s.ref is None]
        pending = set(plan.pending_models())
        for slot in sorted(free, key=lambda s: (s.model not in pending, s.index)):
            held = Counter(s.model for s in self.slots if s.model is not None)
            share = plan.take(slot.model, held)
            if share is None:
                return
            name = self.config.models[share.model_index].display_name
            switch = "" if slot.model in (None, share.model_index) else " (switching model)"
            slot.model, slot.share, slot.progress = share.model_index, share, None
            slot.ref = slot.handle.run.remote(share.model_index, list(share.conversations))
            runs = ", ".join(f"{seq} run {run}" for _, seq, run in share.conversations)
            self.hooks.event(
                "info", f"{slot.label}: {name}{switch}, {len(share.conversations)} conversation(s): {runs}"
            )

    def _collect(self, slot: _Slot, plan: DispatchPlan) -> None:
        ray = self.ray
        ref, share = slot.ref, slot.share
        slot.ref, slot.share, slot.drain_ref, slot.progress = None, None, None, None
        try:
            result: ShareResult = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self._died(slot, share.conversations if share else (), exc, plan)
            return
        except ray.exceptions.TaskCancelledError:
            return
        except ray.exceptions.RayTaskError as exc:  # the share raised: a bug or an error of ours
            cause = getattr(exc, "cause", None)
            if isinstance(cause, StorybenchError | LeaseLost):
                raise cause from exc
            raise JobError(f"{slot.label} failed: {_cause(exc)} (traceback in that node's Ray logs)") from exc
        self._events(slot, result.events)
        if result.lost:
            raise LeaseLost(f"{slot.label}: the evaluation's lease was taken over")
        s = self.summary
        s.completed, s.failed = s.completed + result.completed, s.failed + result.failed
        s.stopped = s.stopped or result.stopped
        for model, stats in result.per_model.items():
            mine = s.per_model.setdefault(model, {"responses": 0, "tokens": 0, "seconds": 0.0})
            for k, v in stats.items():
                mine[k] = mine.get(k, 0) + v
        self.known |= set(result.stored_keys)
        self.finished += result.completed + result.failed
        self.x.nodes_used[result.node_id] += result.completed
        tokens = sum(int(v.get("tokens", 0)) for v in result.per_model.values())
        self.hooks.event(
            "info",
            f"{slot.label}: {result.completed} stored, {result.failed} failed in {result.seconds:.1f} s "
            f"({tokens / max(result.seconds, 1e-6):.1f} tok/s)",
            ray_node=result.node_id,
            ray_slot=slot.index,
            stored=result.completed,
        )

    def _died(
        self, slot: _Slot, share: tuple[ConversationId, ...], exc: Exception, plan: DispatchPlan
    ) -> None:
        """The slot is gone with its node: keep what it stored, hand out again what is missing."""
        self.slots.remove(slot)
        _quietly(self.ray.kill, slot.handle, no_restart=True)
        stored = self.store.completed_task_keys(self.eid)
        keys = {k for c in share for k in self.keys_of[c]}
        new = (stored & keys) - self.known
        self.known |= new
        self.summary.completed += len(new)
        self.finished += len(new)
        self.x.nodes_used[slot.node_id] += len(new)
        missing = [c for c in share if any(k not in stored for k in self.keys_of[c])]
        plan.give_back(missing)
        self.hooks.event(
            "warning",
            f"{slot.label} died ({type(exc).__name__}): its {len(new)} stored response(s) are kept; "
            f"{len(missing)} of its {len(share)} conversation(s) go to the other "
            f"{len(self.slots)} slot(s)",
            ray_node=slot.node_id,
            stored=len(new),
        )

    # --- console and progress -------------------------------------------------------------------
    def _events(self, slot: _Slot, events: list[tuple[str, str, dict[str, Any]]]) -> None:
        for level, message, fields in events:
            self.hooks.event(level, f"[{slot.label}] {message}", **fields)

    def _relay(self) -> None:
        """Collect each busy slot's console lines and progress (never waiting on a slot) and report."""
        now = time.monotonic()
        latest: dict[str, Any] | None = None
        for slot in self.slots:
            if slot.drain_ref is not None:
                ready, _ = self.ray.wait([slot.drain_ref], timeout=0)
                if not ready:
                    continue
                ref, slot.drain_ref = slot.drain_ref, None
                try:
                    events, progress = self.ray.get(ref)
                except self.ray.exceptions.RayError:
                    continue  # a dead slot: its share's reply says so
                self._events(slot, events)
                if progress is not None and slot.ref is not None:
                    slot.progress = latest = progress
            if slot.ref is not None and slot.drain_ref is None and now - slot.drained_at >= DRAIN_EVERY_S:
                slot.drained_at = now
                slot.drain_ref = slot.handle.drain.remote()
        if latest is not None:
            self.last_progress = self._combined(latest)
            self.hooks.progress(self.last_progress)

    def final_progress(self) -> None:
        """The evaluation's counts once every share is back (a fast share may never have reported)."""
        fields = {k: v for k, v in self.last_progress.items() if k != "ray_slots_busy"}
        self.hooks.progress(
            fields | {"tasks_done": self.finished, "tasks_total": self.total, "tokens_per_s": None}
        )

    def _combined(self, lead: dict[str, Any]) -> dict[str, Any]:
        """The lead slot's progress, with the evaluation's counts and every busy slot's tokens/s."""
        live = [s.progress for s in self.slots if s.ref is not None and s.progress]
        rate = sum(float(p.get("aggregate_tokens_per_s") or p.get("tokens_per_s") or 0.0) for p in live)
        fields = {k: v for k, v in lead.items() if k != "share_done"}
        fields["tasks_done"] = self.finished + sum(int(p.get("share_done") or 0) for p in live)
        fields["tasks_total"] = self.total
        if fields.get("tokens_per_s") is not None:
            fields["tokens_per_s"] = round(rate, 2)
        fields["aggregate_tokens_per_s"] = round(rate, 2)
        fields["ray_slots_busy"] = len(live)
        return fields


def _cause(exc: BaseException) -> str:
    """The first line of what went wrong, without Ray's traceback banner."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"


def _quietly(call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """A best-effort call to a slot that may already be gone."""
    try:
        call(*args, **kwargs)
    except Exception as exc:
        log.debug("ignored while cleaning up a Ray slot: %s", exc)
