#!/usr/bin/env bash
# Print CMAKE_ARGS for building llama-cpp-python on this machine.
# A native build enables AMX where the CPU advertises it, and ggml's AMX
# matmul segfaults on the first decode inside VMs that do not let it run
# (see README, Troubleshooting). So: native off, AMX off, and each SIMD
# level on only where /proc/cpuinfo lists it.
set -eu
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
has() { case " $flags " in *" $1 "*) echo ON ;; *) echo OFF ;; esac; }
args="-DGGML_NATIVE=OFF -DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma) -DGGML_F16C=$(has f16c) -DGGML_AVX512=$(has avx512f)"
args="$args -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
if command -v nvcc >/dev/null 2>&1 && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  args="$args -DGGML_CUDA=on"
fi
echo "$args"
