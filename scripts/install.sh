#!/usr/bin/env bash
# Sets up ./.venv with localllm and a llama-cpp-python built for this machine's CPU,
# then proves the build by loading the bundled model and decoding a token.
#
# Why the CPU flags: llama.cpp's default build (GGML_NATIVE=ON) compiles for every
# instruction set cpuid reports, AMX included, and some machines report AMX yet
# fault on its tile instructions (SIGILL/segfault). We switch native off and turn
# on, one by one, the instruction sets /proc/cpuinfo lists, never AMX.
# pip caches the built wheel without regard to CMAKE_ARGS, so a crashing wheel
# could be reused silently: the smoke test catches that and rebuilds from source.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${LOCALLLM_VENV:-.venv}
PYTHON=${PYTHON:-python3}
LLAMA_CPP_VERSION=0.3.36

cpu_cmake_args() {
    local args="-DLLAVA_BUILD=OFF"  # multimodal helper library: not used, halves the build
    args+=" -DGGML_RPC=ON"          # `localllm serve --rpc`: layers on other machines' rpc-servers
    if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
        local flags
        flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
        has() { for f in "$@"; do [[ "$flags" == *" $f "* ]] || return 1; done; }
        args+=" -DGGML_NATIVE=OFF"
        has avx && args+=" -DGGML_AVX=ON" || args+=" -DGGML_AVX=OFF"
        has avx2 && args+=" -DGGML_AVX2=ON" || args+=" -DGGML_AVX2=OFF"
        has fma && args+=" -DGGML_FMA=ON" || args+=" -DGGML_FMA=OFF"
        has f16c && args+=" -DGGML_F16C=ON" || args+=" -DGGML_F16C=OFF"
        has bmi2 && args+=" -DGGML_BMI2=ON" || args+=" -DGGML_BMI2=OFF"
        has avx_vnni && args+=" -DGGML_AVX_VNNI=ON" || args+=" -DGGML_AVX_VNNI=OFF"
        if has avx512f avx512cd avx512vl avx512dq avx512bw; then
            args+=" -DGGML_AVX512=ON"
            has avx512_vbmi && args+=" -DGGML_AVX512_VBMI=ON"
            has avx512_vnni && args+=" -DGGML_AVX512_VNNI=ON"
            has avx512_bf16 && args+=" -DGGML_AVX512_BF16=ON"
        else
            args+=" -DGGML_AVX512=OFF"
        fi
        args+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    fi
    if [ "${LOCALLLM_CUDA:-auto}" = "1" ] || { [ "${LOCALLLM_CUDA:-auto}" = "auto" ] \
        && command -v nvcc >/dev/null && nvidia-smi -L >/dev/null 2>&1; }; then
        args+=" -DGGML_CUDA=ON"
    fi
    echo "$args"
}

smoke_test() {
    # In a subprocess: an illegal instruction kills it, not this script.
    "$VENV/bin/python" scripts/smoke_test.py
}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

export CMAKE_ARGS="${CMAKE_ARGS:-$(cpu_cmake_args)}"
echo "localllm install: CMAKE_ARGS=$CMAKE_ARGS"
[[ "$CMAKE_ARGS" == *"-DGGML_RPC=ON"* ]] && export LOCALLLM_REQUIRE_RPC=1
"${PIP[@]}" install -q -e '.[test]'

if ! smoke_test; then
    echo "localllm install: llama-cpp-python fails the smoke test; rebuilding it from source" >&2
    "${PIP[@]}" cache remove 'llama_cpp_python*' >/dev/null 2>&1 || true
    "${PIP[@]}" install -q --no-cache-dir --force-reinstall --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$LLAMA_CPP_VERSION"
    smoke_test
fi
if [ "${LOCALLLM_REQUIRE_RPC:-0}" = 1 ]; then
    # llama.cpp's rpc-server, for `localllm serve --rpc` peers and tests/rpc (non-fatal: serving works without it)
    scripts/rpc/build_server.sh "$VENV" || echo "localllm install: ggml-rpc-server not built; tests/rpc will skip" >&2
fi
echo "localllm install: ready ($VENV)"
