#!/usr/bin/env bash
# Builds llama-server and llama-bench from the llama.cpp sources vendored in the
# llama-cpp-python sdist that localllm installs, so both servers share one llama.cpp.
#   scripts/build_llama_server.sh [OUT_DIR]   (default /tmp/llama-server-build)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/llama-server-build}
VERSION=$(.venv/bin/python -c "import llama_cpp; print(llama_cpp.__version__)")
mkdir -p "$OUT"
if [ ! -d "$OUT/src" ]; then
    .venv/bin/python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$OUT"
    tar xzf "$OUT/llama_cpp_python-$VERSION.tar.gz" -C "$OUT"
    mv "$OUT/llama_cpp_python-$VERSION/vendor/llama.cpp" "$OUT/src"
fi
# Same CPU flags as scripts/install.sh uses for the Python build.
FLAGS=$(bash -c 'source <(sed -n "/^cpu_cmake_args()/,/^}/p" scripts/install.sh); cpu_cmake_args')
cmake -S "$OUT/src" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON $FLAGS >/dev/null
cmake --build "$OUT/build" --target llama-server llama-bench -j"$(nproc)"
echo "$OUT/build/bin/llama-server"
