"""doctor's CPU check: a llama.cpp build for SIMD levels the CPU lacks is a failure, not a crash later."""

from __future__ import annotations

from storybench_core.doctor import missing_cpu_features

AVX512_BUILD = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 1 | LLAMAFILE = 1 | "
AVX2_FLAGS = {"sse3", "avx", "avx2", "f16c", "fma"}


def test_an_avx512_build_on_an_avx2_only_cpu_is_named() -> None:
    assert missing_cpu_features(AVX512_BUILD, AVX2_FLAGS) == ["AVX512"]


def test_a_build_the_cpu_supports_passes() -> None:
    assert missing_cpu_features(AVX512_BUILD, AVX2_FLAGS | {"avx512f"}) == []
    assert missing_cpu_features(AVX512_BUILD.replace("AVX512 = 1", "AVX512 = 0"), AVX2_FLAGS) == []


def test_unknown_cpu_flags_claim_nothing() -> None:
    assert missing_cpu_features(AVX512_BUILD, None) == []
