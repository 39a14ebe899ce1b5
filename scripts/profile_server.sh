#!/usr/bin/env bash
# py-spy profile of `localllm serve` under a streamed load: scripts/profile_server.sh TAG [CONC] [REQUESTS]
# MODEL (default /tmp/tiny.gguf: a 128k-vocabulary model whose decode is a few ms, so per-token
# Python costs show), PYSPY_EXTRA (e.g. --gil). Writes /tmp/prof_TAG.raw; summarise with
# scripts/profile_summary.py.
set -u
TAG=$1; C=${2:-1}; N=${3:-12}; MODEL=${MODEL:-/tmp/tiny.gguf}; PYSPY_EXTRA=${PYSPY_EXTRA:-}
cd "$(dirname "$0")/.."
LOCALLLM_CACHE_DIR=$(mktemp -d) .venv/bin/python -m localllm.cli serve --model $MODEL --port 18190 --parallel 8 --ctx 16384 --threads 2 > /tmp/prof_$TAG.server.log 2>&1 &
SP=$!
for i in $(seq 60); do curl -sf http://127.0.0.1:18190/ready >/dev/null && break; sleep 0.5; done
.venv/bin/python -m localllm.cli bench http://127.0.0.1:18190 --concurrency $C --requests 4 --max-tokens 64 >/dev/null 2>&1
.venv/bin/python -m localllm.cli bench http://127.0.0.1:18190 --concurrency $C --requests $N --max-tokens 128 --json /tmp/prof_$TAG.bench.json > /tmp/prof_$TAG.bench.txt 2>&1 &
BP=$!
sleep 1
.venv/bin/py-spy record --pid $SP --duration 8 --rate 200 $PYSPY_EXTRA --format raw -o /tmp/prof_$TAG.raw >/dev/null 2>&1
wait $BP
kill $SP; wait $SP
tail -5 /tmp/prof_$TAG.bench.txt
