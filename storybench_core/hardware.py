"""One look at the machine: GPUs (NVML), CPU, RAM, disk, llama.cpp build.

Never raises: a machine without a GPU, NVML or llama-cpp-python is a normal
answer, reported as a plain note rather than an error.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any

from storybench_core.paths import models_dir


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    vram_total_bytes: int
    vram_free_bytes: int
    vram_used_bytes: int
    driver_version: str | None
    utilization_percent: float | None


@dataclass(frozen=True)
class HardwareSnapshot:
    gpus: list[GpuInfo] = field(default_factory=list)
    cpu_count_logical: int = 1
    cpu_count_physical: int | None = None
    cpu_load_percent: float | None = None
    ram_total_bytes: int = 0
    ram_available_bytes: int = 0
    disk_free_bytes: int | None = None
    """Free space where models are stored (STORYBENCH_HOME/models)."""
    nvml_error: str | None = None
    """Why no GPU is listed (no driver, no NVIDIA GPU…); None when NVML answered."""

    @property
    def best_gpu(self) -> GpuInfo | None:
        """The GPU with the most free memory, or None."""
        return max(self.gpus, key=lambda gpu: gpu.vram_free_bytes, default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hardware_snapshot(cpu_sample_s: float = 0.1) -> HardwareSnapshot:
    """Measure GPUs, CPU, RAM and disk now; `cpu_sample_s` is how long CPU load is sampled."""
    gpus, nvml_error = _gpus()
    logical, physical, load, ram_total, ram_available = _cpu_and_ram(cpu_sample_s)
    return HardwareSnapshot(
        gpus=gpus,
        cpu_count_logical=logical,
        cpu_count_physical=physical,
        cpu_load_percent=load,
        ram_total_bytes=ram_total,
        ram_available_bytes=ram_available,
        disk_free_bytes=_disk_free(),
        nvml_error=nvml_error,
    )


def _gpus() -> tuple[list[GpuInfo], str | None]:
    try:
        import pynvml
    except Exception as exc:  # nvidia-ml-py missing or broken
        return [], f"nvidia-ml-py is not installed ({type(exc).__name__}): GPUs not detected, CPU only"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded / …
        return [], f"no NVIDIA GPU found (NVML: {_nvml_text(exc)}): CPU only"
    try:
        driver = _text(_safe(pynvml.nvmlSystemGetDriverVersion))
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            rates = _safe(pynvml.nvmlDeviceGetUtilizationRates, handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=_text(_safe(pynvml.nvmlDeviceGetName, handle)) or f"GPU {index}",
                    vram_total_bytes=int(memory.total),
                    vram_free_bytes=int(memory.free),
                    vram_used_bytes=int(memory.used),
                    driver_version=driver,
                    utilization_percent=float(rates.gpu) if rates is not None else None,
                )
            )
    except Exception as exc:
        return [], f"NVML could not read the GPUs ({_nvml_text(exc)}): CPU only"
    finally:
        _safe(pynvml.nvmlShutdown)
    if not gpus:
        return [], "NVML found no GPU: CPU only"
    return gpus, None


def _cpu_and_ram(cpu_sample_s: float) -> tuple[int, int | None, float | None, int, int]:
    logical = os.cpu_count() or 1
    try:
        import psutil
    except Exception:
        return logical, None, None, 0, 0
    physical = _safe(psutil.cpu_count, logical=False)
    load = _safe(psutil.cpu_percent, interval=max(cpu_sample_s, 0.0) or None)
    memory = _safe(psutil.virtual_memory)
    return (
        _safe(psutil.cpu_count, logical=True) or logical,
        physical,
        float(load) if load is not None else None,
        int(memory.total) if memory is not None else 0,
        int(memory.available) if memory is not None else 0,
    )


def _disk_free() -> int | None:
    try:
        return shutil.disk_usage(models_dir()).free
    except OSError:
        return None


def llama_build_info() -> dict[str, Any]:
    """What the installed llama-cpp-python was built with, without loading a model.

    Keys: available (importable), version, gpu_offload (bool|None), system_info (str), cpu_features
    ({"AVX2": True, "AMX_INT8": False, …}), error (str|None).
    """
    info: dict[str, Any] = {
        "available": False,
        "version": None,
        "gpu_offload": None,
        "system_info": "",
        "cpu_features": {},
        "error": None,
    }
    try:
        import llama_cpp
    except Exception as exc:
        info["error"] = f"llama-cpp-python is not importable ({type(exc).__name__}: {exc})"
        return info
    info["available"] = True
    info["version"] = getattr(llama_cpp, "__version__", None)
    try:
        info["gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
        system_info = _text(llama_cpp.llama_print_system_info()) or ""
    except Exception as exc:
        info["error"] = f"llama-cpp-python did not report its build ({type(exc).__name__}: {exc})"
        return info
    info["system_info"] = system_info.strip()
    info["cpu_features"] = parse_cpu_features(system_info)
    return info


def parse_cpu_features(system_info: str) -> dict[str, bool]:
    """`"CPU : SSE3 = 1 | AVX2 = 1 | AMX_INT8 = 0 |"` → {"SSE3": True, "AVX2": True, "AMX_INT8": False}."""
    features: dict[str, bool] = {}
    for part in system_info.replace("\n", "|").split("|"):
        key, sep, value = part.rpartition("=")
        if not sep:
            continue
        name = key.split(":")[-1].strip()
        value = value.strip()
        if name and value.isdigit():
            features[name] = value != "0"
    return features


def _safe(func: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return func(*args, **kwargs)
    except Exception:
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _nvml_name(exc: BaseException) -> str:
    return type(exc).__name__.removeprefix("NVMLError_")


def _nvml_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or _nvml_name(exc)
