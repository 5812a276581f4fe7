"""hardware: a snapshot never raises; no GPU is a normal answer."""

from __future__ import annotations

import builtins
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from storybench_core import hardware
from storybench_core.hardware import GpuInfo, HardwareSnapshot, hardware_snapshot, llama_build_info


def test_snapshot_has_sane_numbers(storybench_home: Path) -> None:
    snap = hardware_snapshot(cpu_sample_s=0.05)

    assert snap.cpu_count_logical >= 1
    assert snap.cpu_count_physical is None or 1 <= snap.cpu_count_physical <= snap.cpu_count_logical
    assert snap.cpu_load_percent is None or 0.0 <= snap.cpu_load_percent <= 100.0
    assert 0 < snap.ram_available_bytes <= snap.ram_total_bytes
    assert snap.disk_free_bytes is not None and snap.disk_free_bytes > 0
    for gpu in snap.gpus:
        assert gpu.vram_total_bytes >= gpu.vram_free_bytes >= 0
    assert json.loads(json.dumps(snap.to_dict()))["cpu_count_logical"] == snap.cpu_count_logical


def test_no_gpu_here_is_a_plain_note() -> None:
    snap = hardware_snapshot(cpu_sample_s=0)
    if snap.gpus:
        pytest.skip("this machine has an NVIDIA GPU")
    assert snap.gpus == []
    assert snap.best_gpu is None
    assert snap.nvml_error is not None and "CPU only" in snap.nvml_error


def test_nvml_failures_never_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("pynvml")

    class NVMLError_DriverNotLoaded(Exception):
        def __str__(self) -> str:
            return "Driver Not Loaded"

    def fail() -> None:
        raise NVMLError_DriverNotLoaded()

    fake.nvmlInit = fail  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)

    snap = hardware_snapshot(cpu_sample_s=0)

    assert snap.gpus == []
    assert snap.nvml_error == "no NVIDIA GPU found (NVML: Driver Not Loaded): CPU only"


def test_gpus_read_through_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("pynvml")
    memory = [
        types.SimpleNamespace(total=16 * 2**30, free=12 * 2**30, used=4 * 2**30),
        types.SimpleNamespace(total=24 * 2**30, free=20 * 2**30, used=4 * 2**30),
    ]
    calls: list[str] = []
    fake.nvmlInit = lambda: calls.append("init")  # type: ignore[attr-defined]
    fake.nvmlShutdown = lambda: calls.append("shutdown")  # type: ignore[attr-defined]
    fake.nvmlSystemGetDriverVersion = lambda: b"560.35"  # type: ignore[attr-defined]
    fake.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
    fake.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    fake.nvmlDeviceGetName = lambda h: f"Fake GPU {h}"  # type: ignore[attr-defined]
    fake.nvmlDeviceGetMemoryInfo = lambda h: memory[h]  # type: ignore[attr-defined]
    fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=37)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)

    snap = hardware_snapshot(cpu_sample_s=0)

    assert snap.nvml_error is None
    assert snap.gpus[1] == GpuInfo(1, "Fake GPU 1", 24 * 2**30, 20 * 2**30, 4 * 2**30, "560.35", 37.0)
    assert snap.best_gpu == snap.gpus[1]
    assert calls == ["init", "shutdown"]


def test_missing_pynvml_and_psutil_still_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_such_module(name: str, *args: Any, **kwargs: Any) -> Any:
        if name in ("pynvml", "psutil"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_such_module)

    snap = hardware_snapshot(cpu_sample_s=0)

    assert snap.gpus == [] and "nvidia-ml-py is not installed" in (snap.nvml_error or "")
    assert snap.cpu_count_logical >= 1


def test_llama_build_info_without_llama_cpp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails
    info = llama_build_info()
    assert info["available"] is False
    assert "llama-cpp-python is not importable" in info["error"]


def test_llama_build_info_of_the_installed_build() -> None:
    pytest.importorskip("llama_cpp")
    info = llama_build_info()
    assert info["available"] is True, info["error"]
    assert isinstance(info["gpu_offload"], bool)
    assert "CPU" in info["system_info"]
    assert info["cpu_features"], info["system_info"]


def test_parse_cpu_features() -> None:
    line = "CPU : SSE3 = 1 | AVX2 = 1 | AMX_INT8 = 0 | LLAMAFILE = 1 | "
    assert hardware.parse_cpu_features(line) == {
        "SSE3": True,
        "AVX2": True,
        "AMX_INT8": False,
        "LLAMAFILE": True,
    }


def test_snapshot_dataclass_defaults() -> None:
    assert HardwareSnapshot().best_gpu is None
