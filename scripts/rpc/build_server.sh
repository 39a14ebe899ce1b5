#!/usr/bin/env bash
# Builds llama.cpp's rpc-server (`ggml-rpc-server`) into VENV/bin against the ggml libraries the
# venv's llama-cpp-python already ships (built with -DGGML_RPC=ON by scripts/install.sh): one
# C++ file from the same llama-cpp-python sdist, compiled in seconds, instead of a second
# llama.cpp build.   scripts/rpc/build_server.sh [VENV]   (default .venv)
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-.venv}
PY="$VENV/bin/python"
VERSION=$("$PY" -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))")
LIB=$("$PY" -c "import llama_cpp, pathlib; print(pathlib.Path(llama_cpp.__file__).parent / 'lib')")
[ -e "$LIB/libggml-rpc.so" ] || { echo "build_server: $LIB has no libggml-rpc.so (GGML_RPC=OFF)" >&2; exit 1; }
SRC=build/llama-cpp-python-$VERSION
if [ ! -d "$SRC" ]; then
    mkdir -p build/sdist
    "$PY" -m pip download -q --no-deps --no-binary :all: -d build/sdist "llama-cpp-python==$VERSION"
    mkdir -p "$SRC" && tar -xzf "build/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$SRC" --strip-components=1 \
        "llama_cpp_python-$VERSION/vendor/llama.cpp/tools/rpc" "llama_cpp_python-$VERSION/vendor/llama.cpp/ggml/include"
fi
LLAMA="$SRC/vendor/llama.cpp"
"${CXX:-g++}" -O2 -std=c++17 "$LLAMA/tools/rpc/rpc-server.cpp" -I "$LLAMA/ggml/include" \
    -L "$LIB" -lggml -lggml-base -lggml-rpc -lggml-cpu -Wl,-rpath,"$LIB" -o "$VENV/bin/ggml-rpc-server"
"$VENV/bin/ggml-rpc-server" --help > /dev/null 2>&1
echo "build_server: $VENV/bin/ggml-rpc-server (llama.cpp from llama-cpp-python $VERSION)"
