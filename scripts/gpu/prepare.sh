#!/usr/bin/env bash
# Run HERE (the development machine) before the device calls: fills the ignored folder
# .devcarry that the `device` tool carries (name it in `carry`), well under 64 MiB:
#   .devcarry/llama_cpp_python  trimmed llama-cpp-python sdist (scripts/gpu/trim_sdist.sh)
#   .devcarry/wheels            wheels the GPU machine's python3 lacks (diskcache only)
#   .devcarry/head              the localllm under test: `git archive` of REF (default HEAD)
#   .devcarry/before            with BEFORE_REF set: that revision too, for before/after figures
#   [BEFORE_REF=REV] scripts/gpu/prepare.sh [REF]
set -euo pipefail
cd "$(dirname "$0")/../.."
REF=${1:-HEAD}
mkdir -p .git/info
grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || echo /.devcarry/ >> .git/info/exclude
bash scripts/gpu/trim_sdist.sh
mkdir -p .devcarry/wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .devcarry/wheels diskcache==5.6.3
rm -rf .devcarry/head && mkdir -p .devcarry/head
git archive "$REF" localllm models.toml | tar -x -C .devcarry/head
git rev-parse "$REF" > .devcarry/head/COMMIT
rm -rf .devcarry/before
if [ -n "${BEFORE_REF:-}" ]; then
    mkdir -p .devcarry/before
    git archive "$BEFORE_REF" localllm models.toml | tar -x -C .devcarry/before
    git rev-parse "$BEFORE_REF" > .devcarry/before/COMMIT
fi
du -sh .devcarry
