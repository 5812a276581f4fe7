"""Where an evaluation's conversations run: in the worker's process, or over a Ray cluster.

The Worker (jobs.py) claims an evaluation with its lease either way. Without a Ray address it runs
the evaluation itself (runner.py). With one (settings.py) it hands the evaluation to the Ray
executor instead:

  settings.py      STORYBENCH_RAY_ADDRESS / `[storybench] ray_address`: whether to use Ray
  dispatch.py      which conversations a free slot gets next (no Ray: plain bookkeeping)
  ray_slot.py      the actor: one slot, one loaded model, shares run through the normal engine
  ray_executor.py  the driver: connect, one actor per slot, ray.wait, progress, Stop, dead nodes

Only ray_executor.py imports Ray, and only when an evaluation runs on it: the core imports and
runs without Ray installed (it is an optional extra, requirements-ray.txt).
"""

from __future__ import annotations

from .dispatch import ConversationId, DispatchPlan, Share
from .ray_executor import RayExecutor, connect, import_ray
from .ray_slot import ShareResult, SlotActor, StoreLocation
from .settings import RAY_ADDRESS_ENV, ray_address

__all__ = [
    "RAY_ADDRESS_ENV",
    "ConversationId",
    "DispatchPlan",
    "RayExecutor",
    "Share",
    "ShareResult",
    "SlotActor",
    "StoreLocation",
    "cluster_executor",
    "connect",
    "import_ray",
    "ray_address",
]


def cluster_executor() -> RayExecutor | None:
    """The Ray executor when a cluster address is configured, else None (run in this process)."""
    address = ray_address()
    return RayExecutor(address) if address else None
