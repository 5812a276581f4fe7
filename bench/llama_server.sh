#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` from the sources of the installed llama-cpp-python,
# with the same CMake flags as our wheel (scripts/cmake_args.sh: SIMD from /proc/cpuinfo,
# AMX off), so bench/batched.py can compare storybench's batched path with the server's
# parallel slots on the same llama.cpp version and machine. Prints the binary's path.
#
#   bash bench/llama_server.sh            # builds into .cache/llama-server/ (a few minutes)
#   .cache/llama-server/bin/llama-server -m MODEL.gguf -np 3 -c 6144 -t 2 --port 8080
#   .venv/bin/python bench/batched.py --widths 3 --server http://127.0.0.1:8080/v1
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py="$root/.venv/bin/python"
out="$root/.cache/llama-server"
version=$("$py" -c 'import llama_cpp; print(llama_cpp.__version__)')
if [ -x "$out/bin/llama-server" ] && [ "$(cat "$out/version" 2>/dev/null)" = "$version" ]; then
  echo "$out/bin/llama-server"
  exit 0
fi
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
"$py" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$src" >&2
tar -xzf "$src"/llama_cpp_python-*.tar.gz -C "$src"
llama="$(echo "$src"/llama_cpp_python-*/vendor/llama.cpp)"
# shellcheck disable=SC2046
cmake -S "$llama" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF \
  $(bash "$root/scripts/cmake_args.sh") >&2
cmake --build "$src/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$out/bin"
cp "$src/build/bin/llama-server" "$out/bin/"
echo "$version" > "$out/version"
echo "$out/bin/llama-server"
