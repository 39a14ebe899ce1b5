#!/usr/bin/env bash
# CUDA build of llama.cpp from the llama-cpp-python sdist, for the GPU machine:
# one CMake build gives libllama (+ libggml-cuda) for llama-cpp-python AND the
# llama-server, llama-bench and llama-quantize binaries, so the Python bindings
# and the reference server share one llama.cpp. Then the pure-Python package
# llama_cpp is installed into $SITE with those libraries in llama_cpp/lib (what
# a pip install of the sdist produces, without compiling llama.cpp a second time;
# LLAMA_CPP_LIB_PATH points at the same folder).
#
#   scripts/gpu/build.sh [SDIST_DIR] [BUILD_DIR] [SITE]
#   defaults: .devcarry/llama_cpp_python  /tmp/gpuwork/build  /tmp/site
# Environment: CUDA_ARCH (default 90 = H100/H200), JOBS (default nproc).
# Writes BUILD_DIR/build_times.json and BUILD_DIR/DONE (exit status) at the end.
#
# The single-build path is the one the issue allows (LLAMA_CPP_LIB_PATH); the
# equivalent pip build, which compiles everything once more inside pip, is
#   CMAKE_ARGS="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" \
#   CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip install --no-build-isolation --no-deps SDIST_DIR
set -uo pipefail
cd "$(dirname "$0")/../.."
SDIST=$(realpath "${1:-.devcarry/llama_cpp_python}")
BUILD=${2:-/tmp/gpuwork/build}
SITE=${3:-/tmp/site}
ARCH=${CUDA_ARCH:-90}
JOBS=${JOBS:-$(nproc)}
mkdir -p "$BUILD" "$SITE"
rm -f "$BUILD/DONE"
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
export CUDACXX=${CUDACXX:-$(command -v nvcc)}

# Same CPU flags as scripts/install.sh (native off, instruction sets from /proc/cpuinfo,
# never AMX; adds -DGGML_CUDA=ON when nvcc and a GPU exist).
CPU_FLAGS=$(bash -c 'source <(sed -n "/^cpu_cmake_args()/,/^}/p" scripts/install.sh); LOCALLLM_CUDA=1 cpu_cmake_args')
t0=$(date +%s.%N)
cmake -S "$SDIST/vendor/llama.cpp" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCH" $CPU_FLAGS \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DGGML_CUDA_NCCL=OFF
rc=$?
t1=$(date +%s.%N)
if [ $rc -eq 0 ]; then
    cmake --build "$BUILD" -j "$JOBS" --target llama llama-server llama-bench llama-quantize
    rc=$?
fi
t2=$(date +%s.%N)
if [ $rc -eq 0 ]; then
    rm -rf "$SITE/llama_cpp"
    cp -r "$SDIST/llama_cpp" "$SITE/llama_cpp"
    mkdir -p "$SITE/llama_cpp/lib"
    cp -a "$BUILD"/bin/lib*.so* "$SITE/llama_cpp/lib/"
    PYTHONPATH=$SITE python3 -c "import llama_cpp.llama_cpp as ll; ll.llama_backend_init(); \
print('llama_cpp', __import__('llama_cpp').__version__, 'gpu offload:', ll.llama_supports_gpu_offload())"
    rc=$?
fi
t3=$(date +%s.%N)
python3 - "$BUILD/build_times.json" "$t0" "$t1" "$t2" "$t3" "$JOBS" "$ARCH" "$rc" <<'PY'
import json, sys
path, t0, t1, t2, t3, jobs, arch, rc = sys.argv[1:]
t0, t1, t2, t3 = map(float, (t0, t1, t2, t3))
json.dump({"configure_s": round(t1 - t0, 1), "build_s": round(t2 - t1, 1), "install_s": round(t3 - t2, 1),
           "total_s": round(t3 - t0, 1), "jobs": int(jobs), "cuda_arch": arch, "rc": int(rc),
           "targets": ["llama", "llama-server", "llama-bench", "llama-quantize"]}, open(path, "w"), indent=1)
PY
cat "$BUILD/build_times.json"
echo "$rc" > "$BUILD/DONE"
exit $rc
