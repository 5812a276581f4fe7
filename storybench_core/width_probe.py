"""A short measurement of the loaded model's decode rate at several batch widths, cached.

Which widths pay depends on the CPU (on one AMD EPYC three sequences decode
no faster than one, four and more do) and on the build, the thread count and
the model. So on a local GGUF model the scheduler measures: a few tokens of
one short prompt, decoded greedily at each candidate width through the
backend's own `chat_batch` (after a first call the prompt's cache and logits
are reused, so only decoding is timed), twice, the better figure kept. The
rates are kept in STORYBENCH_HOME/cache/batch_widths.json, keyed by the model
file (name, size, a hash of its first MiB), the llama.cpp build and CPU
features, the thread count, flash attention, the CPU and GPU layers: the next
evaluation on the same model and machine measures nothing. Delete the file to
measure again; STORYBENCH_WIDTH_PROBE=0 turns the measurement off (the width
is then what memory allows).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .backends.base import GenerationSettings, Message, ModelBackend
from .errors import StopRequested, StorybenchError
from .paths import storybench_home

log = logging.getLogger(__name__)

PROBE_ENV = "STORYBENCH_WIDTH_PROBE"
# Widths measured, up to what memory and the pending conversations allow (and that width itself).
PROBE_WIDTHS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32)
PROBE_TOKENS = 8  # new tokens per conversation and width
PROBE_PROMPT: list[Message] = [
    {"role": "user", "content": "Write the opening of a story about a lighthouse keeper and a storm."}
]
CACHE_FILE = "batch_widths.json"
_HEAD_BYTES = 1 << 20
# A measurement taken while other processes kept some task waiting for a CPU this share of the time
# is used for this evaluation only, not kept: llama.cpp's threads slow down unevenly when not alone.
BUSY_SHARE = 0.10


def probe_enabled() -> bool:
    return os.environ.get(PROBE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


# --- what the rates are kept under ------------------------------------------------------------


def _cpu_identity() -> dict[str, str]:
    """The CPU model name and a hash of its flags (/proc/cpuinfo), '' where unreadable."""
    name, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = hashlib.sha256(value.strip().encode()).hexdigest()[:16]
            if name and flags:
                break
    except OSError:
        pass
    return {"cpu": name, "cpu_flags": flags}


def _file_identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    with path.open("rb") as f:
        head = hashlib.sha256(f.read(_HEAD_BYTES)).hexdigest()[:16]
    return {"file": path.name, "size": stat.st_size, "head_sha256": head}


def machine_key(backend: ModelBackend) -> tuple[str, dict[str, Any]] | None:
    """The cache key for this loaded model on this machine and what it is made of; None if unknown."""
    path = getattr(backend, "model_path", None)
    if path is None:
        return None
    try:
        identity: dict[str, Any] = _file_identity(Path(path))
    except OSError:
        return None
    engine = getattr(backend, "engine_info", None)
    plan = getattr(backend, "gpu_plan", None)
    identity |= {
        "engine": {k: v for k, v in (engine or {}).items() if k not in ("template", "model_file")},
        "n_gpu_layers": getattr(plan, "n_gpu_layers", 0),
        **_cpu_identity(),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return key, identity


def cache_path() -> Path:
    return storybench_home() / "cache" / CACHE_FILE


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:  # a cache: the measurement is simply made again next time
        log.warning("could not write the batch width cache %s: %s", path, exc)


def cached_rates(backend: ModelBackend) -> dict[int, float]:
    """The rates measured before for this model and machine (empty when none)."""
    key = machine_key(backend)
    if key is None:
        return {}
    entry = _read_cache(cache_path()).get(key[0]) or {}
    return {int(w): float(r) for w, r in (entry.get("rates") or {}).items()}


def save_rates(backend: ModelBackend, rates: dict[int, float]) -> bool:
    """Keep these rates for this model and machine; False when the model has no file to key them by."""
    key = machine_key(backend)
    if key is None:
        return False
    path = cache_path()
    data = _read_cache(path)
    data[key[0]] = {
        "identity": key[1],
        "rates": {str(w): r for w, r in sorted(rates.items())},
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "probe_tokens": PROBE_TOKENS,
    }
    _write_cache(path, data)
    return True


# --- the measurement ------------------------------------------------------------------------------


def cpu_wait_us() -> int | None:
    """Microseconds some task has waited for a CPU since boot (Linux PSI), None where unknown."""
    try:
        line = Path("/proc/pressure/cpu").read_text(encoding="utf-8").splitlines()[0]
        return int(line.rsplit("total=", 1)[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


def busy_share(waited_before_us: int | None, started_s: float) -> float | None:
    """Share of the wall time since started_s in which some task waited for a CPU."""
    waited = cpu_wait_us()
    if waited is None or waited_before_us is None:
        return None
    return (waited - waited_before_us) / 1e6 / max(time.perf_counter() - started_s, 1e-6)


def measure_rate(backend: ModelBackend, width: int, tokens: int = PROBE_TOKENS) -> float:
    """Aggregate new tokens/s of `width` copies of the probe prompt decoded together."""
    settings = [GenerationSettings(temperature=0.0, max_tokens=tokens, seed=1 + i) for i in range(width)]
    started = time.perf_counter()
    done = backend.chat_batch([PROBE_PROMPT] * width, settings)  # type: ignore[attr-defined]
    elapsed = max(time.perf_counter() - started, 1e-6)
    return sum(c.completion_tokens for c in done if c.finish_reason != "error") / elapsed


@dataclass
class Probe:
    """Decode rates by width for one loaded model, and how they were obtained."""

    rates: dict[int, float]
    measured: list[int] = field(default_factory=list)  # widths measured now (the rest were cached)
    seconds: float = 0.0  # time spent measuring now
    busy_share: float | None = None  # share of that time some task waited for a CPU
    kept: bool = False  # written to the cache for the next evaluation

    def describe(self) -> str:
        """'measured now in 4.1 s' / '…, on a busy CPU: not kept' / 'measured before'."""
        if not self.measured:
            return "measured before"
        how = f"measured now in {self.seconds:.1f} s"
        if self.busy_share is not None and self.busy_share > BUSY_SHARE:
            how += f", on a busy CPU ({self.busy_share:.0%} waiting): not kept"
        return how


def probe_rates(
    backend: ModelBackend,
    most: int,
    should_stop: Callable[[], bool] = lambda: False,
    widths: Sequence[int] = PROBE_WIDTHS,
) -> Probe:
    """Rates at every candidate width up to `most`, measured now where not cached.

    StopRequested propagates when should_stop() says so between two widths. Rates measured
    on a busy CPU (BUSY_SHARE) are used but not cached.
    """
    probe = Probe(cached_rates(backend))
    # The widest width allowed too: the conversations pending may all fit in one round.
    wanted = sorted({w for w in (*widths, most) if w <= most} - set(probe.rates))
    if not wanted:
        return probe
    waited_before, started = cpu_wait_us(), time.perf_counter()
    try:
        # One call at the widest width first: the decoder is sized once, the prompt evaluated once.
        backend.chat_batch(  # type: ignore[attr-defined]
            [PROBE_PROMPT] * max(wanted), [GenerationSettings(temperature=0.0, max_tokens=1)] * max(wanted)
        )
        # Two passes, up then down, keeping each width's better figure: a moment of contention
        # slows one measurement, rarely both.
        for width in [*wanted, *reversed(wanted)]:
            if should_stop():
                raise StopRequested()
            rate = round(measure_rate(backend, width), 2)
            if width not in probe.measured:
                probe.measured.append(width)
                probe.rates[width] = rate
            else:
                probe.rates[width] = max(probe.rates[width], rate)
    except StorybenchError as exc:  # e.g. no memory for the widest context: keep what was measured
        log.warning("%s: batch width probe stopped: %s", backend.name, exc)
    probe.seconds = time.perf_counter() - started
    probe.busy_share = busy_share(waited_before, started)
    if probe.busy_share is not None and probe.busy_share > BUSY_SHARE:
        log.warning("%s: batch width probe on a busy CPU: not cached", backend.name)
    elif probe.measured:
        probe.kept = save_rates(backend, probe.rates)
    return probe
