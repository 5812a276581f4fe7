"""What the Hardware page shows, from one hardware snapshot."""

from __future__ import annotations

from dataclasses import dataclass

from ..hardware import HardwareSnapshot

GIB = 1024**3
NO_GPU_MESSAGE = "No GPU: models run on CPU."


def format_bytes(n_bytes: int | None) -> str:
    """'1.5 GiB', '512 MiB'; an em dash when unknown."""
    if n_bytes is None:
        return "—"
    if n_bytes >= GIB:
        return f"{n_bytes / GIB:.1f} GiB"
    return f"{n_bytes / 1024**2:.0f} MiB"


def _fraction(used: float, total: float) -> float:
    return min(1.0, max(0.0, used / total)) if total > 0 else 0.0


@dataclass(frozen=True)
class GpuRow:
    title: str
    vram_label: str
    vram_fraction: float
    driver: str
    utilization: str


@dataclass(frozen=True)
class HardwareView:
    gpus: list[GpuRow]
    no_gpu_message: str | None
    no_gpu_detail: str | None
    cpu_cores: str
    cpu_load: str
    cpu_fraction: float
    ram_label: str
    ram_fraction: float
    disk_free: str


def hardware_view(snapshot: HardwareSnapshot) -> HardwareView:
    """Labels and fractions for every gauge on the page."""
    gpus = [
        GpuRow(
            title=f"GPU {g.index}: {g.name}",
            vram_label=f"{format_bytes(g.vram_used_bytes)} / {format_bytes(g.vram_total_bytes)} used",
            vram_fraction=_fraction(g.vram_used_bytes, g.vram_total_bytes),
            driver=g.driver_version or "unknown",
            utilization=f"{g.utilization_percent:.0f}%" if g.utilization_percent is not None else "—",
        )
        for g in snapshot.gpus
    ]
    cores = f"{snapshot.cpu_count_logical} logical"
    if snapshot.cpu_count_physical:
        cores = f"{snapshot.cpu_count_physical} physical / {cores}"
    load = snapshot.cpu_load_percent
    ram_used = max(0, snapshot.ram_total_bytes - snapshot.ram_available_bytes)
    return HardwareView(
        gpus=gpus,
        no_gpu_message=None if gpus else NO_GPU_MESSAGE,
        no_gpu_detail=None if gpus else snapshot.nvml_error,
        cpu_cores=cores,
        cpu_load=f"{load:.0f}%" if load is not None else "—",
        cpu_fraction=_fraction(load or 0.0, 100.0),
        ram_label=(
            f"{format_bytes(ram_used)} / {format_bytes(snapshot.ram_total_bytes)} used"
            if snapshot.ram_total_bytes
            else "—"
        ),
        ram_fraction=_fraction(ram_used, snapshot.ram_total_bytes),
        disk_free=format_bytes(snapshot.disk_free_bytes),
    )
