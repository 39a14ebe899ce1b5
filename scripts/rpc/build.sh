#!/usr/bin/env bash
# Builds llama.cpp with the RPC backend (GGML_RPC=ON) from llama-cpp-python's vendored sources:
# the shared libraries for a separate venv and llama.cpp's `ggml-rpc-server`, in one CMake build.
# The default .venv (scripts/install.sh) stays as it is.
#
#   scripts/rpc/build.sh [SDIST_DIR] [BUILD_DIR] [VENV]
#   defaults: /tmp/sdist/llama_cpp_python-0.3.36  /tmp/rpc-build  /tmp/rpc-venv
#
# Then: PATH=$BUILD_DIR/b/bin:$PATH $VENV/bin/python -m pytest -q -s tests/rpc   (as root: ip netns)
# Set CPU flags for your machine in CPU_ARGS (never AVX-512 on a CPU without it).
set -euo pipefail
cd "$(dirname "$0")/../.."
SDIST=${1:-/tmp/sdist/llama_cpp_python-0.3.36}
BUILD=${2:-/tmp/rpc-build}
VENV=${3:-/tmp/rpc-venv}
CPU_ARGS=${CPU_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"}

# shellcheck disable=SC2086
cmake -S "$SDIST/vendor/llama.cpp" -B "$BUILD/b" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON -DGGML_RPC=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_MTMD=OFF $CPU_ARGS
cmake --build "$BUILD/b" -j"$(nproc)" --target llama ggml-rpc-server

# The Python bindings without their own native build, then the RPC-enabled libraries beside them.
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" "$VENV/bin/pip" install -q "$SDIST"
"$VENV/bin/pip" install -q -e '.[test]'
LIB=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/llama_cpp/lib
mkdir -p "$LIB" && cp -a "$BUILD"/b/bin/lib*.so* "$LIB"/
"$VENV/bin/python" -c "from localllm.engine.llama_backend.rpc import rpc_available; assert rpc_available()"
echo "RPC build ready: $VENV (rpc-server: $BUILD/b/bin/ggml-rpc-server)"
