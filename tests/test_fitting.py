"""fitting: layer and batch-width arithmetic, checked against numbers worked out by hand.

The tiny GGUF (fixtures_gguf) has 4 blocks of 115,200 bytes, 2 KV heads of
width 16, and an output layer of 8,192 + 256 bytes. At n_ctx 4096 with an
f16 cache one block's KV is 4096 × 2 heads × (16 + 16) × 2 bytes = 524,288.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from fixtures_gguf import tiny_gguf_sizes, write_tiny_gguf

from storybench_core.errors import ConfigError
from storybench_core.fitting import (
    COMPUTE_OVERHEAD_MIN_BYTES,
    GIB,
    MIB,
    choose_batch_width,
    choose_gpu_layers,
    compute_overhead_bytes,
    estimate_kv_cache_bytes,
    format_bytes,
    kv_bytes_per_layer,
    plan_for_model,
)
from storybench_core.gguf_info import GGUFInfo, read_gguf_info
from storybench_core.hardware import GpuInfo, HardwareSnapshot

N_CTX = 4096
LAYER = 115_200
KV_LAYER = 524_288
OUTPUT = 8_192 + 256
OVERHEAD = 300 * MIB


@pytest.fixture
def tiny(tmp_path: Path) -> GGUFInfo:
    info = read_gguf_info(write_tiny_gguf(tmp_path / "tiny.gguf", n_layers=4))
    sizes = tiny_gguf_sizes(n_layers=4)
    assert (sizes.layer_bytes, sizes.output_bytes + sizes.output_norm_bytes) == (LAYER, OUTPUT)
    return info


def test_kv_cache_arithmetic(tiny: GGUFInfo) -> None:
    assert kv_bytes_per_layer(tiny, N_CTX) == KV_LAYER
    assert estimate_kv_cache_bytes(tiny, N_CTX) == 4 * KV_LAYER
    assert estimate_kv_cache_bytes(tiny, N_CTX, n_seq=3) == 12 * KV_LAYER
    assert estimate_kv_cache_bytes(tiny, N_CTX, type_bytes=1) == 2 * KV_LAYER  # q8_0-sized cache


def test_kv_cache_with_missing_fields(tiny: GGUFInfo) -> None:
    # no head_count_kv: llama.cpp's default is head_count (4 heads × 16 wide)
    assert kv_bytes_per_layer(replace(tiny, head_count_kv=None), N_CTX) == 2 * KV_LAYER
    # no key/value length: embedding / heads = 64 / 4 = 16, same as stated
    assert kv_bytes_per_layer(replace(tiny, key_length=None, value_length=None), N_CTX) == KV_LAYER
    # no head metadata at all: full attention over the embedding width
    bare = replace(tiny, head_count=None, head_count_kv=None, key_length=None, value_length=None)
    assert kv_bytes_per_layer(bare, N_CTX) == N_CTX * 2 * 64 * 2
    assert kv_bytes_per_layer(replace(bare, embedding_length=None), N_CTX) == 0


def test_all_layers_and_output_fit(tiny: GGUFInfo) -> None:
    free = OVERHEAD + 4 * (LAYER + KV_LAYER) + OUTPUT
    plan = choose_gpu_layers(tiny, N_CTX, free, 100)
    assert plan.n_gpu_layers == 5 and plan.output_on_gpu
    assert plan.total_layers == 4
    assert plan.estimated_vram_bytes == free
    assert plan.budget_bytes == free
    assert plan.kv_cache_bytes == 4 * KV_LAYER
    assert plan.reason == "all 4 layers + output on GPU 0: 302 MiB of 302 MiB budget (100% of 302 MiB free)"


def test_all_layers_fit_but_not_the_output(tiny: GGUFInfo) -> None:
    plan = choose_gpu_layers(tiny, N_CTX, OVERHEAD + 4 * (LAYER + KV_LAYER) + OUTPUT - 1, 100)
    assert plan.n_gpu_layers == 4 and not plan.output_on_gpu
    assert plan.reason.startswith("all 4 layers on GPU 0, output layer on CPU:")


def test_some_layers_fit(tiny: GGUFInfo) -> None:
    plan = choose_gpu_layers(tiny, N_CTX, OVERHEAD + 2 * (LAYER + KV_LAYER) + 100, 100, gpu_label="GPU 3")
    assert plan.n_gpu_layers == 2
    assert plan.estimated_vram_bytes == OVERHEAD + 2 * (LAYER + KV_LAYER)
    assert plan.kv_cache_bytes == 2 * KV_LAYER
    assert plan.reason.startswith("2/4 layers on GPU 3: ")


def test_no_layer_fits(tiny: GGUFInfo) -> None:
    plan = choose_gpu_layers(tiny, N_CTX, OVERHEAD + LAYER + KV_LAYER - 1, 100)
    assert plan.n_gpu_layers == 0
    assert plan.estimated_vram_bytes == 0
    assert plan.reason.startswith("0/4 layers on GPU 0: one layer with its KV cache needs")
    assert plan.reason.endswith("CPU only")


def test_limit_percent_is_honoured(tiny: GGUFInfo) -> None:
    free = 2 * (OVERHEAD + 2 * (LAYER + KV_LAYER) + 100)
    half = choose_gpu_layers(tiny, N_CTX, free, 50)
    assert half.budget_bytes == free // 2
    assert half.n_gpu_layers == 2
    assert "(50% of 602 MiB free)" in half.reason
    assert choose_gpu_layers(tiny, N_CTX, free, 100).n_gpu_layers == 5
    assert choose_gpu_layers(tiny, N_CTX, free, 0).n_gpu_layers == 0


def test_longer_context_and_more_sequences_cost_layers(tiny: GGUFInfo) -> None:
    free = OVERHEAD + 4 * (LAYER + KV_LAYER) + OUTPUT
    assert choose_gpu_layers(tiny, N_CTX, free, 100, n_seq=2).n_gpu_layers == 2  # (L + 2 KV) × 2 ≤ 4 (L + KV)
    assert choose_gpu_layers(tiny, 2 * N_CTX, free, 100).n_gpu_layers == 2


def test_no_gpu(tiny: GGUFInfo) -> None:
    for free in (None, 0):
        plan = choose_gpu_layers(tiny, N_CTX, free, 80)
        assert (plan.n_gpu_layers, plan.reason, plan.gpu_index) == (0, "no GPU: CPU only", None)


def test_compute_overhead_grows_with_large_budgets(tiny: GGUFInfo) -> None:
    assert compute_overhead_bytes(GIB) == COMPUTE_OVERHEAD_MIN_BYTES
    assert compute_overhead_bytes(40 * GIB) == 2 * GIB
    # fitting holds back 2 GiB, but the estimate counts what the model is likely to use
    plan = choose_gpu_layers(tiny, N_CTX, 40 * GIB, 100)
    assert plan.estimated_vram_bytes == OVERHEAD + 4 * (LAYER + KV_LAYER) + OUTPUT
    room = 40 * GIB - 2 * GIB
    huge = replace(tiny, layer_tensor_bytes=(room // 4 - KV_LAYER,) * 4, output_tensor_bytes=1)
    assert choose_gpu_layers(huge, N_CTX, 40 * GIB, 100).n_gpu_layers == 4
    bigger = replace(huge, layer_tensor_bytes=(room // 4 - KV_LAYER + 1,) * 4)
    assert choose_gpu_layers(bigger, N_CTX, 40 * GIB, 100).n_gpu_layers == 3


def test_plan_for_model_picks_the_gpu_with_most_free_memory(tiny: GGUFInfo) -> None:
    gpus = [
        GpuInfo(0, "Small", 8 * GIB, 100 * MIB, 0, "560", 0.0),
        GpuInfo(1, "Big", 8 * GIB, 2 * GIB, 0, "560", 0.0),
    ]
    snapshot = HardwareSnapshot(gpus=gpus, cpu_count_logical=2)

    plan = plan_for_model(tiny.path, N_CTX, 80, snapshot, gpu_offload_supported=True)

    assert plan.gpu_index == 1
    assert plan.n_gpu_layers == 5
    assert plan.reason.startswith("all 4 layers + output on GPU 1 (Big): ")
    assert "(80% of 2.0 GiB free)" in plan.reason


def test_plan_for_model_without_gpu_or_offload(tiny: GGUFInfo) -> None:
    none = plan_for_model(tiny.path, N_CTX, 80, HardwareSnapshot(gpus=[]))
    assert (none.n_gpu_layers, none.reason) == (0, "no GPU: CPU only")

    snapshot = HardwareSnapshot(gpus=[GpuInfo(0, "Big", 8 * GIB, 8 * GIB, 0, "560", 0.0)])
    cpu_build = plan_for_model(tiny.path, N_CTX, 80, snapshot, gpu_offload_supported=False)
    assert cpu_build.n_gpu_layers == 0
    assert "has no GPU offload" in cpu_build.reason


def test_batch_width(tiny: GGUFInfo) -> None:
    weights = tiny.tensor_bytes_total
    per_seq = 4 * KV_LAYER
    free = OVERHEAD + weights + 5 * per_seq + 10

    width, reason = choose_batch_width(tiny, N_CTX, free, limit_percent=100)
    assert width == 5
    assert reason.startswith("5 conversations at once: 2 MiB of KV cache each (n_ctx 4096)")

    width, reason = choose_batch_width(tiny, N_CTX, free, cap=3, limit_percent=100)
    assert width == 3 and "capped at 3" in reason

    assert choose_batch_width(tiny, N_CTX, 2 * free, limit_percent=50)[0] == 5


def test_batch_width_is_at_least_one(tiny: GGUFInfo) -> None:
    width, reason = choose_batch_width(tiny, N_CTX, 100 * MIB)
    assert width == 1
    assert reason.startswith("1 conversation at a time: one needs 2 MiB of KV cache")


def test_inputs_are_checked(tiny: GGUFInfo) -> None:
    with pytest.raises(ConfigError, match="out of range 0–100"):
        choose_gpu_layers(tiny, N_CTX, GIB, 150)
    with pytest.raises(ConfigError, match="n_ctx = 0"):
        choose_gpu_layers(tiny, 0, GIB, 80)
    with pytest.raises(ConfigError, match="cap = 0"):
        choose_batch_width(tiny, N_CTX, GIB, cap=0)


def test_format_bytes() -> None:
    assert format_bytes(1.5 * GIB) == "1.5 GiB"
    assert format_bytes(420 * MIB) == "420 MiB"
    assert format_bytes(2048) == "2 KiB"
