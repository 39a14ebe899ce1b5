#!/usr/bin/env bash
# Makes a trimmed copy of the llama-cpp-python sdist small enough to travel to the
# GPU machine (device tree limit 64 MiB): the Python package, the build files and the
# llama.cpp sources that a CUDA build of libllama, llama-server, llama-bench and
# llama-quantize needs, gguf-py (the GGUF writer), one vocab-only GGUF and one chat
# template. Docs, tests, examples, other models and the other GPU backends are dropped.
#   scripts/gpu/trim_sdist.sh [SDIST_DIR_OR_TARBALL] [DEST]
#   default: /tmp/sdist/llama_cpp_python-0.3.36  ->  .devcarry/llama_cpp_python
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC=${1:-/tmp/sdist/llama_cpp_python-0.3.36}
DEST=${2:-.devcarry/llama_cpp_python}
VOCAB=${VOCAB:-ggml-vocab-llama-bpe.gguf}
TEMPLATE=${TEMPLATE:-meta-llama-Llama-3.1-8B-Instruct.jinja}
if [ -f "$SRC" ]; then  # a tarball: unpack it first
    tmp=$(mktemp -d); tar xzf "$SRC" -C "$tmp"; SRC=$(echo "$tmp"/llama_cpp_python-*)
fi
L=vendor/llama.cpp
excludes=(.git .github docs tests examples docker $L/.git
    $L/docs $L/media $L/tests $L/examples $L/benches $L/pocs $L/models $L/skills $L/.devops $L/.github
    $L/tools/ui/tests $L/tools/server/tests $L/tools/server/bench $L/gguf-py/tests)
for backend in cann sycl vulkan opencl metal musa hip hexagon webgpu openvino et virtgpu zdnn zendnn; do
    excludes+=("$L/ggml/src/ggml-$backend")
done
rm -rf "$DEST"; mkdir -p "$DEST"
tar -C "$SRC" $(printf -- "--exclude=./%s " "${excludes[@]}") -cf - . | tar -C "$DEST" -xf -
# CMake still names some dropped folders as optional subdirectories: leave them empty.
mkdir -p "$DEST/$L/tests" "$DEST/$L/examples" "$DEST/$L/pocs" "$DEST/$L/models/templates"
cp "$SRC/$L/models/$VOCAB" "$DEST/$L/models/"
cp "$SRC/$L/models/templates/$TEMPLATE" "$DEST/$L/models/templates/"
du -sh "$DEST"
