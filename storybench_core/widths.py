"""How many conversations to decode together: memory sets the ceiling, a measurement the choice.

`choose_width` is the memory side (KV cache per conversation × n_ctx against
free RAM or VRAM, capped by `generation.parallel_runs`); the judge sizes its
batches with it too. `width_from_rates` picks, among the widths memory
allows, the one that finishes a given number of conversations soonest on the
decode rates measured on this machine (width_probe.py): the best widths
differ by CPU (llama.cpp's kernels change with the number of rows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import hardware
from .backends.base import ModelBackend
from .config import GenerationSettingsConfig, ModelSpec
from .errors import StorybenchError
from .execution import can_batch
from .fitting import choose_batch_width
from .gguf_info import read_gguf_info
from .width_probe import probe_enabled, probe_rates

# Share of free RAM (CPU) the KV caches of a batch may take; VRAM uses generation.vram_limit_percent.
RAM_LIMIT_PERCENT = 80.0


def choose_width(
    backend: ModelBackend, gen: GenerationSettingsConfig, n_conversations: int
) -> tuple[int, str]:
    """How many conversations may be generated together on this backend, and why (1 = one at a time)."""
    cap = gen.parallel_runs
    if cap == 1:
        return 1, "generation.parallel_runs = 1: one conversation after another"
    if not can_batch(backend):
        return 1, f"{backend.name} cannot generate several conversations together: one after another"
    if n_conversations <= 1:
        return 1, "a single conversation to generate"
    spec: ModelSpec | None = getattr(backend, "spec", None)
    if getattr(backend, "model_path", None) is not None:
        width, reason = local_width(backend, gen, cap)
    elif spec is not None and spec.kind == "api":
        width = cap or n_conversations
        rpm = f", {spec.requests_per_minute} requests/minute" if spec.requests_per_minute else ""
        reason = (
            f"conversations sent concurrently, at most {spec.max_concurrency} in flight to {spec.base_url}{rpm}"
            + (f" (parallel_runs {cap})" if cap else "")
        )
    else:
        width = cap or n_conversations
        reason = f"parallel_runs {cap}" if cap else "every conversation at once"
    if width > n_conversations:
        width = n_conversations
        reason += f"; {n_conversations} conversations to generate"
    return max(width, 1), reason


def local_width(backend: Any, gen: GenerationSettingsConfig, cap: int | None) -> tuple[int, str]:
    """A GGUF model: KV cache per conversation × n_ctx against free RAM or VRAM."""
    # The loaded backend keeps the header it read before loading: no second parse per call
    # (a judge sizes its batch per stored response).
    info = getattr(backend, "gguf_info", None) or read_gguf_info(backend.model_path)
    snapshot = hardware.hardware_snapshot(cpu_sample_s=0)
    plan = getattr(backend, "gpu_plan", None)
    gpu = snapshot.best_gpu
    if plan is not None and plan.n_gpu_layers > 0 and gpu is not None:
        # The model is loaded: its weights already left the free VRAM; count them back in,
        # since choose_batch_width takes them out of the figure it is given.
        free = gpu.vram_free_bytes + plan.estimated_vram_bytes
        return choose_batch_width(info, backend.context_size(), free, cap, gen.vram_limit_percent)
    # CPU: the weights are memory-mapped, so they are page cache and count as available already.
    return choose_batch_width(
        info, backend.context_size(), snapshot.ram_available_bytes, cap, RAM_LIMIT_PERCENT
    )


# --- the choice from measured rates ----------------------------------------------------------


def balanced_parts(n: int, most: int) -> list[int]:
    """n cut into the fewest parts of at most `most`, as equal as can be (15, 7 → 5, 5, 5)."""
    if n <= 0:
        return []
    count = -(-n // max(most, 1))
    size, extra = divmod(n, count)
    return [size + (1 if k < extra else 0) for k in range(count)]


def rate_at(rates: dict[int, float], width: int, step: int | None = None) -> float:
    """Aggregate decode tokens/s at `width`, from the measured widths.

    A backend that decodes at most `step` conversations per call (backends/llama_batch.py:
    engine["max_step_tokens"]) spends a step of `width` in calls of balanced parts, so an unmeasured
    width above `step` takes the time of those parts; otherwise it is interpolated.
    """
    if width in rates:
        return rates[width]
    if step is not None and width > step:
        parts = balanced_parts(width, step)
        return width / sum(p / max(rate_at(rates, p), 1e-9) for p in parts)
    below = [w for w in rates if w < width]
    above = [w for w in rates if w > width]
    if not below:
        return rates[min(above)]
    lo = max(below)
    if not above:
        return rates[lo]
    hi = min(above)
    return rates[lo] + (rates[hi] - rates[lo]) * (width - lo) / (hi - lo)


def width_from_rates(
    rates: dict[int, float], n_conversations: int, most: int, step: int | None = None
) -> tuple[int, float]:
    """The width (at most `most`) that decodes n equally long conversations soonest, and its rate.

    Conversations go in rounds of equal size (15 at most 7 → three rounds of 5), so no round
    runs nearly alone; a round's time is its size over the rate measured at that width.
    """
    best: tuple[float, int] | None = None
    top = max(1, min(most, n_conversations))
    for cap in range(1, top + 1):
        parts = balanced_parts(n_conversations, cap)
        seconds = sum(p / max(rate_at(rates, p, step), 1e-9) for p in parts)
        width = max(parts, default=1)
        if best is None or seconds < best[0] * (1 - 1e-6):
            best = (seconds, width)
    assert best is not None
    seconds, width = best
    return width, n_conversations / seconds if seconds else 0.0


# --- the width of one model's evaluation -------------------------------------------------------


def width_for(
    spec: ModelSpec,
    backend: ModelBackend,
    gen: GenerationSettingsConfig,
    n_conversations: int,
    event: Callable[..., None],
    should_stop: Callable[[], bool],
    *,
    measure: bool = True,
) -> int:
    """The batch width for one model's pending conversations, said on the console.

    Memory sets the ceiling; an explicit `generation.parallel_runs` is the width (within
    memory). Otherwise, on a local GGUF model, the width comes from the rates measured on
    this machine (width_probe.py), when `measure` allows it.
    """
    try:
        width, reason = choose_width(backend, gen, n_conversations)
    except StorybenchError as exc:  # e.g. an unreadable GGUF header: one at a time, say why
        width, reason = 1, f"could not size a batch ({exc}); one conversation after another"
    local = getattr(backend, "model_path", None) is not None
    measured = False
    if width > 1 and local and measure and gen.parallel_runs is None and probe_enabled():
        probe = probe_rates(backend, width, should_stop)
        if probe.rates:
            measured = True
            engine = getattr(backend, "engine_info", None) or {}
            step = engine.get("max_step_tokens") if isinstance(engine, dict) else None
            chosen, rate = width_from_rates(probe.rates, n_conversations, width, step)
            rounds = balanced_parts(n_conversations, chosen)
            table = ", ".join(f"{w}: {r:.1f}" for w, r in sorted(probe.rates.items()) if w <= width)
            reason = (
                f"{n_conversations} conversations in {len(rounds)} round(s) of {chosen} or fewer, "
                f"about {rate:.1f} tok/s decoding (aggregate decode tok/s by width, {probe.describe()}: "
                f"{table}); memory allows {width}: {reason}"
            )
            width = chosen
    if width > 1 or measured or gen.parallel_runs not in (None, 1):
        event("info", f"{spec.display_name}: batch width {width}: {reason}", batch_width=width)
    return width
