#!/usr/bin/env bash
# Driver for the GPU machine (the `device` tool): runs the named stages in order, in
# the repository root there, keeping state in /tmp/gpuwork while the machine stays warm.
#   (first, here: scripts/gpu/prepare.sh; every call carries .devcarry)
#   bash scripts/gpu/device.sh setup build bandwidth f16 wait:420 quantize numpyfirst check llamabench collect
#   bash scripts/gpu/device.sh compare:-1 collect
# Stages:
#   setup       wheels from .devcarry/wheels into /tmp/site; environment report
#   build       scripts/gpu/build.sh in the background (setsid; log /tmp/gpuwork/build.log)
#   bandwidth   torch device-to-device copy bandwidth
#   f16         Llama-3.1-8B-shaped random-weight F16 GGUF (make_synthetic_gguf.py)
#   wait:N      wait for the background build until this script has run N seconds
#   quantize    F16 -> Q4_K_M with the CUDA build's llama-quantize
#   numpyfirst  shows the numpy-before-llama_cpp load crash and the preload cure
#   check       scripts/gpu/gpu_check.py: full and partial offload, /v1/stats vs nvidia-smi
#   llamabench  llama-bench pp512 / tg128, all layers on the GPU, flash attention off and on
#   importorder loads the model after importing each of numpy, ssl, ... first
#   overhead    scripts/bench_engine_overhead.py (one stream, engine vs bare llama.cpp loop), all layers
#               on the GPU, greedy and sampled, for .devcarry/head and (if prepared) .devcarry/before
#   compare[:N] scripts/gpu/bench_gpu.py: llama-server vs localllm at 1, 16, 64 streams
#               (N: localllm --n-gpu-layers, default auto)
#   collect     results (and logs) into $OUT/results.tgz, summaries into $OUT
# The localllm under test is .devcarry/head (git archive of a commit; see its COMMIT),
# so edits in flight in the working tree do not change what is measured.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
W=/tmp/gpuwork; R=$W/results; BIN=$W/build/bin
MODEL_F16=$W/llama8b-f16.gguf; MODEL=$W/llama8b-q4_k_m.gguf
LLAMA_CPP=$REPO/.devcarry/llama_cpp_python/vendor/llama.cpp
HEAD_SRC=$REPO/.devcarry/head
mkdir -p "$R" "$W/data" "$W/cache"
export PYTHONPATH=$REPO/scripts/gpu/preload:/tmp/site:$HEAD_SRC PYTHONUNBUFFERED=1
export LOCALLLM_DATA_DIR=$W/data LOCALLLM_CACHE_DIR=$W/cache
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH

stage_setup() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .devcarry/wheels/*.whl
    {
        date -u; uname -a; nproc; free -g; df -h /tmp | tail -1
        nvidia-smi; nvcc --version | tail -2; cmake --version | head -1; ninja --version; gcc --version | head -1
        which python3; python3 --version
        python3 -c "import aiohttp, diskcache, psutil, pynvml, prometheus_client, jinja2, numpy, torch; \
print('imports ok; torch', torch.__version__, 'cuda', torch.version.cuda)"
        echo "localllm under test: $(cat "$HEAD_SRC/COMMIT")"
    } > "$R/env.txt" 2>&1
    tail -4 "$R/env.txt"
}

stage_build() {
    if [ -f "$W/build/DONE" ] || { [ -f "$W/build.pid" ] && kill -0 "$(cat "$W/build.pid")" 2>/dev/null; }; then
        echo "build: already done or running"; return 0
    fi
    setsid nohup bash scripts/gpu/build.sh "$REPO/.devcarry/llama_cpp_python" "$W/build" /tmp/site \
        > "$W/build.log" 2>&1 < /dev/null &
    echo $! > "$W/build.pid"
    echo "build: started (pid $(cat "$W/build.pid"))"
}

stage_bandwidth() { python3 scripts/gpu/copy_bandwidth.py --out "$R/bandwidth.json"; }

stage_f16() {
    [ -f "$MODEL_F16" ] && { echo "f16: exists"; return 0; }
    python3 scripts/make_synthetic_gguf.py --llama-cpp "$LLAMA_CPP" --no-quantize --out "$MODEL_F16" \
        2>&1 | tee "$R/synthetic_f16.log"
}

stage_wait() {  # wait:N waits for the build until this script has run N seconds
    local until=${1:-300}
    while [ ! -f "$W/build/DONE" ] && [ "$SECONDS" -lt "$until" ]; do sleep 5; done
    if [ -f "$W/build/DONE" ]; then echo "build: finished, rc $(cat "$W/build/DONE")"; cat "$W/build/build_times.json"
    else echo "build: still running at ${SECONDS}s: $(grep -c . "$W/build.log") log lines, last:"; tail -2 "$W/build.log"; fi
    [ -f "$W/build/DONE" ] && [ "$(cat "$W/build/DONE")" = 0 ]
}

stage_quantize() {
    [ -f "$MODEL" ] && { echo "quantize: exists"; return 0; }
    [ "$(cat "$W/build/DONE" 2>/dev/null)" = 0 ] || { echo "quantize: skipped, build not finished"; return 1; }
    local t0=$SECONDS
    "$BIN/llama-quantize" "$MODEL_F16" "$MODEL" Q4_K_M "$(nproc)" > "$R/quantize.log" 2>&1
    local rc=$?
    echo "quantize: rc $rc in $((SECONDS - t0)) s; $(du -h "$MODEL" | cut -f1)" | tee -a "$R/quantize.log"
    tail -4 "$R/quantize.log"
    [ $rc -eq 0 ] && rm -f "$MODEL_F16"
    return $rc
}

stage_numpyfirst() {  # the segfault that preload/sitecustomize.py works around, and its cure
    for preload in 0 1; do
        LOCALLLM_PRELOAD_LLAMA_CPP=$preload timeout 120 python3 -c "
import numpy, llama_cpp.llama_cpp as ll
ll.llama_backend_init(); p = ll.llama_model_default_params(); p.n_gpu_layers = 99
print('numpy first, preload=$preload: loaded', bool(ll.llama_model_load_from_file(b'$MODEL', p)))" > "$R/numpyfirst_$preload.log" 2>&1
        echo "numpy imported first, preload=$preload: rc $? $(grep -h 'loaded' "$R/numpyfirst_$preload.log")" \
            | tee -a "$R/numpyfirst.txt"
    done
}

stage_overhead() {
    for tree in before head; do
        [ -f "$REPO/.devcarry/$tree/COMMIT" ] || continue
        for temperature in 0 0.8; do
            LOCALLLM_ROOT=$REPO/.devcarry/$tree timeout 200 python3 scripts/bench_engine_overhead.py --model "$MODEL" \
                --n-gpu-layers -1 --parallel 64 --ctx 32768 --threads 16 --temperature $temperature --repeats 5 \
                --json "$R/overhead_${tree}_$temperature.json" 2>> "$R/overhead.err" | tail -1 | tee -a "$R/overhead.txt"
        done
    done
}

stage_importorder() {  # which module imported before llama_cpp makes the model load crash
    for first in none numpy ssl sqlite3 aiohttp localllm.server.app; do
        local pre="import $first"; [ "$first" = none ] && pre=""
        timeout 120 python3 -c "$pre
import llama_cpp.llama_cpp as ll
ll.llama_backend_init(); p = ll.llama_model_default_params(); p.n_gpu_layers = 0
print('loaded', bool(ll.llama_model_load_from_file(b'$MODEL', p)))" > "$R/importorder_$first.log" 2>&1
        echo "$first imported first: rc $? $(grep -h '^loaded' "$R/importorder_$first.log")" | tee -a "$R/importorder.txt"
    done
}

stage_overhead1() {  # the same, one sequence and a 4,096 context (llama-bench's shape): what the slots cost
    for temperature in 0 0.8; do
        LOCALLLM_ROOT=$HEAD_SRC timeout 120 python3 scripts/bench_engine_overhead.py --model "$MODEL" \
            --n-gpu-layers -1 --parallel 1 --ctx 4096 --threads 16 --temperature $temperature --repeats 5 \
            --json "$R/overhead1_$temperature.json" 2>> "$R/overhead.err" | tail -1 | tee -a "$R/overhead.txt"
    done
}

stage_partial64() {  # finding 3: 32 of 33 layers (output layer on the CPU), 64 slots; partial64:C streams
    local conc=${1:-64}
    LOCALLLM_N_GPU_LAYERS=32 timeout 200 python3 scripts/gpu/bench_gpu.py --only localllm \
        --llama-server "$BIN/llama-server" --model "$MODEL" --parallel 64 --ctx 32768 --concurrency "$conc" --rounds 2 \
        --repeats 1 --max-tokens 128 --out-dir "$R/partial$conc" --localllm-root "$HEAD_SRC" --llama-cpp "$LLAMA_CPP" \
        2>&1 | tee "$R/partial$conc.out" | grep -E "conc|error|Error" | tail -3
    grep -h -i -B2 -A4 "cuda error" "$R/partial$conc"/*.log 2>/dev/null | grep -v "^\s*$" | head -12
}

stage_check() {
    LOCALLLM_PRELOAD_LLAMA_CPP=${PRELOAD:-0} python3 scripts/gpu/gpu_check.py --model "$MODEL" --out-dir "$R" \
        --localllm-root "$HEAD_SRC" --load-timeout-s 150 2>&1 | tee "$R/gpu_check.out"
}

stage_llamabench() {
    "$BIN/llama-bench" -m "$MODEL" -ngl 99 -fa 0,1 -p 512 -n 128 -r 3 -o json > "$R/llama_bench.json" \
        2> "$R/llama_bench.err"
    local rc=$?
    python3 -c "import json,sys; [print(r['n_prompt'], r['n_gen'], 'fa', r.get('flash_attn'), round(r['avg_ts'],1), 'tok/s') \
for r in json.load(open(sys.argv[1]))]" "$R/llama_bench.json"
    return $rc
}

stage_compare() {  # compare:N also sets localllm's --n-gpu-layers (LOCALLLM_N_GPU_LAYERS), e.g. -1
    [ -n "${1:-}" ] && export LOCALLLM_N_GPU_LAYERS=$1
    LOCALLLM_PRELOAD_LLAMA_CPP=${PRELOAD:-0} python3 scripts/gpu/bench_gpu.py --llama-server "$BIN/llama-server" --model "$MODEL" --parallel 64 --ctx 32768 \
        --concurrency 1 16 64 --rounds 3 --repeats "${REPEATS:-2}" --max-tokens 128 --out-dir "$R" \
        --localllm-root "$HEAD_SRC" --llama-cpp "$LLAMA_CPP" \
        --llama-bench-json "$R/llama_bench.json" --bandwidth-json "$R/bandwidth.json" 2>&1 | tee "$R/bench_gpu.out"
}

stage_collect() {
    [ -n "${OUT:-}" ] || return 0
    cp "$W/build.log" "$R/build.log" 2>/dev/null; cp "$W/build/build_times.json" "$R/" 2>/dev/null
    nvidia-smi > "$R/nvidia_smi_end.txt" 2>&1
    tar czf "$OUT/results.tgz" -C "$W" results
    for f in build_times.json gpu_check.json bench_gpu.json llama_bench.json bandwidth.json stages.log numpyfirst.txt \
             overhead.txt importorder.txt partial64.out; do
        [ -f "$R/$f" ] && cp "$R/$f" "$OUT/"
    done
    ls -la "$OUT"
}

for arg in "$@"; do
    name=${arg%%:*}; param=""; [ "$name" != "$arg" ] && param=${arg#*:}
    t0=$SECONDS
    echo "=== $name $param ($(date -u +%T))"
    "stage_$name" $param
    rc=$?
    echo "$(date -u +%T) $name $param rc=$rc $((SECONDS - t0))s" | tee -a "$R/stages.log"
done
