"""How much of a model fits in GPU memory, and how many conversations at once.

Arithmetic only, from GGUF metadata (`gguf_info`) and free memory (`hardware`).
The estimates follow llama.cpp's placement rules:

- `n_gpu_layers = k` puts the *last* k repeating blocks on the GPU, each with
  its share of the KV cache; the output layer (output norm + head, or a copy
  of the token embedding when the head is tied) joins only at
  `n_gpu_layers = blocks + 1`. The input embedding always stays on the CPU.
- KV cache per block and token: head_count_kv × (key width + value width) ×
  `type_bytes` (2 for the default f16 cache). Sliding-window layers are
  counted at full context: an over-estimate for models such as Gemma 3,
  on the safe side.
- Compute buffers are not in the file. We reserve `max(300 MiB, 5 % of the
  budget)` for them: llama.cpp's CUDA compute buffer for small and mid-size
  models at a few thousand tokens of context is a few hundred MiB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from storybench_core.errors import ConfigError
from storybench_core.gguf_info import GGUFInfo, read_gguf_info
from storybench_core.hardware import HardwareSnapshot, hardware_snapshot, llama_build_info

MIB = 1024**2
GIB = 1024**3
COMPUTE_OVERHEAD_MIN_BYTES = 300 * MIB
COMPUTE_OVERHEAD_FRACTION = 0.05
DEFAULT_KV_TYPE_BYTES = 2  # f16 K and V cache


@dataclass(frozen=True)
class GpuPlan:
    """The n_gpu_layers to load with, and why.

    `n_gpu_layers` is llama.cpp's count: 0 is CPU only, `total_layers` puts
    every block on the GPU, `total_layers + 1` the output layer as well.
    `estimated_vram_bytes` is offloaded weights + their KV cache + 300 MiB
    of compute buffers; fitting holds back `compute_overhead_bytes(budget)`.
    """

    n_gpu_layers: int
    total_layers: int
    estimated_vram_bytes: int
    budget_bytes: int
    reason: str
    gpu_index: int | None = None
    kv_cache_bytes: int = 0
    """KV cache bytes placed on the GPU (part of estimated_vram_bytes)."""

    @property
    def output_on_gpu(self) -> bool:
        return self.total_layers > 0 and self.n_gpu_layers > self.total_layers


def format_bytes(n_bytes: float) -> str:
    """1234567890 → "1.1 GiB"; 420 MiB → "420 MiB"."""
    if abs(n_bytes) >= GIB:
        return f"{n_bytes / GIB:.1f} GiB"
    if abs(n_bytes) >= MIB:
        return f"{n_bytes / MIB:.0f} MiB"
    return f"{n_bytes / 1024:.0f} KiB"


def kv_bytes_per_layer(
    info: GGUFInfo, n_ctx: int, n_seq: int = 1, type_bytes: int = DEFAULT_KV_TYPE_BYTES
) -> int:
    """K and V cache of one block for `n_seq` sequences of `n_ctx` tokens each."""
    kv_heads = info.head_count_kv or info.head_count
    if kv_heads and info.head_dim_k and info.head_dim_v:
        width = kv_heads * (info.head_dim_k + info.head_dim_v)
    elif info.embedding_length:  # no head metadata: assume full multi-head attention
        width = 2 * info.embedding_length
    else:
        width = 0
    return n_ctx * n_seq * width * type_bytes


def estimate_kv_cache_bytes(
    info: GGUFInfo, n_ctx: int, n_seq: int = 1, type_bytes: int = DEFAULT_KV_TYPE_BYTES
) -> int:
    """Whole KV cache: every block, `n_seq` sequences of `n_ctx` tokens."""
    return info.block_count * kv_bytes_per_layer(info, n_ctx, n_seq, type_bytes)


def compute_overhead_bytes(budget_bytes: int) -> int:
    """What we hold back for llama.cpp's compute buffers (see module docstring)."""
    return max(COMPUTE_OVERHEAD_MIN_BYTES, int(budget_bytes * COMPUTE_OVERHEAD_FRACTION))


def choose_gpu_layers(
    info: GGUFInfo,
    n_ctx: int,
    vram_free_bytes: int | None,
    vram_limit_percent: float,
    n_seq: int = 1,
    *,
    gpu_label: str = "GPU 0",
    gpu_index: int | None = 0,
    kv_type_bytes: int = DEFAULT_KV_TYPE_BYTES,
) -> GpuPlan:
    """Offload as many blocks as fit in `vram_free_bytes × vram_limit_percent %`."""
    _check_inputs(n_ctx, n_seq, vram_limit_percent)
    total = info.block_count
    if not vram_free_bytes or vram_free_bytes <= 0:
        return GpuPlan(0, total, 0, 0, "no GPU: CPU only", gpu_index=None)
    budget = int(vram_free_bytes * vram_limit_percent / 100)
    budget_text = (
        f"{format_bytes(budget)} budget ({vram_limit_percent:g}% of {format_bytes(vram_free_bytes)} free)"
    )
    overhead = compute_overhead_bytes(budget)
    room = budget - overhead
    kv_layer = kv_bytes_per_layer(info, n_ctx, n_seq, kv_type_bytes)

    used = layers = 0
    for layer_bytes in reversed(info.layer_tensor_bytes[:total]):  # llama.cpp offloads the last blocks
        if used + layer_bytes + kv_layer > room:
            break
        used += layer_bytes + kv_layer
        layers += 1
    kv_on_gpu = layers * kv_layer
    output_fits = layers == total and used + info.output_tensor_bytes <= room
    if output_fits:
        used += info.output_tensor_bytes

    if layers == 0:
        first = (info.layer_tensor_bytes[-1] if info.layer_tensor_bytes else 0) + kv_layer
        reason = (
            f"0/{total} layers on {gpu_label}: one layer with its KV cache needs {format_bytes(first)}, "
            f"{format_bytes(max(room, 0))} is left of the {budget_text} after "
            f"{format_bytes(overhead)} for compute buffers: CPU only"
        )
        return GpuPlan(0, total, 0, budget, reason, gpu_index=gpu_index)

    estimated = used + COMPUTE_OVERHEAD_MIN_BYTES  # the likely use; the larger reserve only guides fitting
    spent = f"{format_bytes(estimated)} of {budget_text}"
    if output_fits:
        reason = f"all {total} layers + output on {gpu_label}: {spent}"
    elif layers == total:
        reason = f"all {total} layers on {gpu_label}, output layer on CPU: {spent}"
    else:
        reason = f"{layers}/{total} layers on {gpu_label}: {spent}"
    n_gpu_layers = layers + 1 if output_fits else layers
    return GpuPlan(
        n_gpu_layers, total, estimated, budget, reason, gpu_index=gpu_index, kv_cache_bytes=kv_on_gpu
    )


def plan_for_model(
    path: str | Path,
    n_ctx: int,
    vram_limit_percent: float,
    snapshot: HardwareSnapshot | None = None,
    n_seq: int = 1,
    *,
    gpu_offload_supported: bool | None = None,
) -> GpuPlan:
    """Read the model, look at the machine, plan on the GPU with the most free memory.

    `gpu_offload_supported=None` asks the installed llama-cpp-python; a CPU-only
    build gets 0 layers even on a GPU machine. The caller loads with
    `main_gpu=plan.gpu_index` so llama.cpp uses the GPU the plan was made for.
    """
    info = read_gguf_info(path)
    snapshot = snapshot if snapshot is not None else hardware_snapshot(cpu_sample_s=0)
    gpu = snapshot.best_gpu
    if gpu is None:
        return choose_gpu_layers(info, n_ctx, None, vram_limit_percent, n_seq)
    if gpu_offload_supported is None:
        gpu_offload_supported = llama_build_info().get("gpu_offload")
    label = f"GPU {gpu.index} ({gpu.name})"
    if gpu_offload_supported is False:
        reason = (
            f"{label} found, but this llama-cpp-python build has no GPU offload: CPU only — "
            "reinstall llama-cpp-python with CUDA enabled to use the GPU"
        )
        return GpuPlan(0, info.block_count, 0, 0, reason, gpu_index=None)
    return choose_gpu_layers(
        info, n_ctx, gpu.vram_free_bytes, vram_limit_percent, n_seq, gpu_label=label, gpu_index=gpu.index
    )


def choose_batch_width(
    info: GGUFInfo,
    n_ctx: int,
    free_bytes: int,
    cap: int | None = None,
    limit_percent: float = 80.0,
    *,
    kv_type_bytes: int = DEFAULT_KV_TYPE_BYTES,
) -> tuple[int, str]:
    """How many conversations of `n_ctx` tokens to decode together, and why.

    `free_bytes` is the free memory the model and its KV cache will live in
    (VRAM when fully offloaded, else RAM), measured before loading: the
    weights and the compute reserve come out of it first. Never less than 1.
    """
    _check_inputs(n_ctx, 1, limit_percent)
    if cap is not None and cap < 1:
        raise ConfigError(f"batch width cap = {cap} must be at least 1")
    per_seq = estimate_kv_cache_bytes(info, n_ctx, 1, kv_type_bytes)
    budget = int(max(free_bytes, 0) * limit_percent / 100)
    overhead = compute_overhead_bytes(budget)
    room = budget - info.tensor_bytes_total - overhead
    where = (
        f"{format_bytes(max(room, 0))} left of {format_bytes(budget)} "
        f"({limit_percent:g}% of {format_bytes(free_bytes)} free) after "
        f"{format_bytes(info.tensor_bytes_total)} of weights and {format_bytes(overhead)} for compute"
    )
    if per_seq <= 0:
        width = cap or 1
        return width, f"{width} at once: the model file gives no KV cache size"
    fits = max(room, 0) // per_seq
    if fits < 1:
        one = f"one needs {format_bytes(per_seq)} of KV cache (n_ctx {n_ctx})"
        return 1, f"1 conversation at a time: {one}, {where}"
    width = min(fits, cap) if cap is not None else fits
    capped = f", capped at {cap}" if cap is not None and fits > cap else ""
    return width, (
        f"{width} conversations at once{capped}: {format_bytes(per_seq)} of KV cache each "
        f"(n_ctx {n_ctx}), {where}"
    )


def _check_inputs(n_ctx: int, n_seq: int, limit_percent: float) -> None:
    if n_ctx < 1:
        raise ConfigError(f"n_ctx = {n_ctx} must be at least 1 token")
    if n_seq < 1:
        raise ConfigError(f"n_seq = {n_seq} must be at least 1 sequence")
    if not 0 <= limit_percent <= 100:
        raise ConfigError(f"memory limit = {limit_percent}% is out of range 0–100")
