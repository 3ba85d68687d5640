#!/usr/bin/env bash
# The embedded local model: llama-cpp-python (compiled from source the first time, about ten
# minutes on two cores; pip's wheel cache makes later installs take seconds) and the verified
# weights of one catalog model (default: the small one the tests use). Safe to run again:
# each step is skipped when its result is already there.
#
#   scripts/install-local-model.sh [MODEL]     MODEL: qwen2.5-coder-0.5b (default) or
#                                                     qwen2.5-coder-1.5b (conch run's default)
set -euo pipefail
cd "$(dirname "$0")/.."

model="${1:-qwen2.5-coder-0.5b}"
python="${PYTHON:-python}"

# One source of truth for the pin: the version LocalModel was written against.
version=$("$python" -c 'from conch.lm._local import LLAMA_CPP_VERSION; print(LLAMA_CPP_VERSION)')
installed=$("$python" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' \
  2>/dev/null || true)

if [ "$installed" = "$version" ] && "$python" -c 'import llama_cpp' 2>/dev/null; then
  echo "llama-cpp-python $version present" >&2
else
  if ! command -v c++ >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing a C++ compiler (g++) to build llama.cpp" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq g++ >/dev/null
  fi
  echo "building llama-cpp-python $version (about ten minutes the first time)..." >&2
  started=$SECONDS
  # GGML_NATIVE=OFF: portable code, so a cached wheel also runs on a different CPU.
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" "$python" -m pip install -q \
    --disable-pip-version-check "llama-cpp-python==$version"
  echo "llama-cpp-python $version installed in $((SECONDS - started)) s" >&2
fi

# `conch models pull` is itself a no-op when a verified copy is already in $CONCH_HOME.
"$python" -c 'from conch.cli import main; main()' models pull "$model" >/dev/null
