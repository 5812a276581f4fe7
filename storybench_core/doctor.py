"""`storybench doctor`: is this installation able to run an evaluation?"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Check:
    name: str
    status: Literal["ok", "warn", "fail"]
    detail: str


def run_checks(store_uri: str | None = None) -> list[Check]:
    return [_python(), *_llama(), _store(store_uri), _bundled(), _gpu()]


def _python() -> Check:
    v = sys.version_info
    ok = v >= (3, 11)
    return Check(
        "python", "ok" if ok else "fail", f"{v.major}.{v.minor}.{v.micro}" + ("" if ok else " (needs 3.11+)")
    )


def _llama() -> list[Check]:
    from .hardware import llama_build_info

    info = llama_build_info()
    if not info.get("available"):
        return [Check("llama-cpp-python", "fail", f"not importable: {info.get('error')} — run `make setup`")]
    checks = [
        Check(
            "llama-cpp-python",
            "ok",
            f"version {info.get('version')}, GPU offload {'yes' if info.get('gpu_offload') else 'no'}",
        )
    ]
    system = str(info.get("system_info", ""))
    checks.append(Check("llama.cpp build flags", "ok", system.strip() or "(no system info reported)"))
    checks.append(_kernels())
    missing = missing_cpu_features(system, _cpu_flags())
    if missing:
        checks.append(
            Check(
                "CPU features",
                "fail",
                f"llama.cpp was built for {', '.join(missing)}, which this CPU lacks: it would crash with an "
                "illegal instruction — rebuild for this machine with `make rebuild-llama`",
            )
        )
    if "AMX_INT8 = 1" in system or "AMX = 1" in system:
        checks.append(
            Check(
                "AMX",
                "warn",
                "this build uses AMX; inside VMs that advertise but do not run AMX it segfaults at the first decode — "
                "rebuild with `make rebuild-llama` (AMX off)",
            )
        )
    return checks


def _kernels() -> Check:
    """Which CPU matrix kernels generation runs on (backends/llama_kernels.py)."""
    from .backends import llama_kernels
    from .errors import ConfigError

    try:
        llama_kernels.requested_mode()
    except ConfigError as exc:
        return Check("CPU matrix kernels", "fail", str(exc))
    mode = llama_kernels.effective_mode()
    limit = llama_kernels.step_limit(mode)
    detail = {
        "tiled": "tiled for every call: a decode step holds every conversation (checked per batch context)",
        "vec_dot": "per-row kernels everywhere (GGML_CPU_TILED_MM=0): no step limit, slower prompts",
        "mixed": f"llama.cpp's own choice: fastest one at a time, batched steps of at most {limit} tokens",
    }[mode]
    return Check("CPU matrix kernels", "ok", f"{mode} — {detail}")


# llama.cpp's feature names (llama_print_system_info) and the /proc/cpuinfo flag each needs.
_FEATURE_FLAGS = {
    "AVX": "avx",
    "AVX2": "avx2",
    "AVX512": "avx512f",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AVX_VNNI": "avx_vnni",
    "FMA": "fma",
    "F16C": "f16c",
    "AMX_INT8": "amx_int8",
}


def missing_cpu_features(system_info: str, cpu_flags: set[str] | None) -> list[str]:
    """Features the llama.cpp build uses that the CPU does not list (empty when flags are unknown)."""
    if not cpu_flags:
        return []
    from .hardware import parse_cpu_features

    used = {name for name, on in parse_cpu_features(system_info).items() if on}
    return sorted(name for name, flag in _FEATURE_FLAGS.items() if name in used and flag not in cpu_flags)


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def _store(uri: str | None) -> Check:
    from .errors import StorybenchError
    from .store.factory import open_store

    try:
        store = open_store(uri)
        store.ping()
        where = store.describe()
        store.close()
    except StorybenchError as exc:
        return Check("store", "fail", str(exc))
    return Check("store", "ok", where)


def _bundled() -> Check:
    from .bundled import BUILTIN_MODELS

    ready = [m.path for m in BUILTIN_MODELS.values() if m.path.is_file()]
    missing = [m.path for m in BUILTIN_MODELS.values() if not m.path.is_file()]
    corrupt = [p for p in ready if not _starts_like_gguf(p)]
    if corrupt:
        where = ", ".join(str(p) for p in corrupt)
        return Check(
            "built-in models",
            "fail",
            f"not a GGUF file: {where}; run `storybench models prepare` to rebuild it",
        )
    if not missing:
        sizes = ", ".join(f"{p} ({p.stat().st_size / 1e6:.0f} MB)" for p in ready)
        return Check("built-in models", "ok", sizes)
    where = ", ".join(str(p) for p in missing)
    return Check("built-in models", "warn", f"not prepared yet at {where}; run `storybench models prepare`")


def _starts_like_gguf(path: Path) -> bool:
    """Whether the file opens with the GGUF magic (a cheap check: no hashing of hundreds of MB)."""
    try:
        with path.open("rb") as handle:
            return handle.read(4) == b"GGUF"
    except OSError:
        return False


def _gpu() -> Check:
    from .hardware import hardware_snapshot

    snap = hardware_snapshot()
    if snap.gpus:
        names = ", ".join(f"{g.name} ({g.vram_free_bytes / 1024**3:.1f} GiB free)" for g in snap.gpus)
        return Check("GPU", "ok", names)
    return Check("GPU", "ok", f"none seen — models run on CPU ({snap.nvml_error or 'no NVIDIA device'})")
