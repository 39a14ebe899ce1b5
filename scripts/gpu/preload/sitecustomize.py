"""Loads llama.cpp's shared libraries before anything imports numpy (device runs only).

Seen on the GPU machine (numpy 2.5.2 wheel with scipy-openblas64 + libgfortran, our
CUDA build of llama.cpp, gcc 13): when numpy is imported before `llama_cpp`, the next
llama_model_load_from_file segfaults, with 0 or all layers offloaded; imported after
`llama_cpp`, it loads and runs. localllm's llama_backend imports numpy first, so
scripts/gpu/device.sh puts this folder on PYTHONPATH and sets LOCALLLM_PRELOAD_LLAMA_CPP=1
for the server runs. Python imports `sitecustomize` at start-up from sys.path.
"""
import os

if os.environ.get("LOCALLLM_PRELOAD_LLAMA_CPP") == "1":
    try:
        import llama_cpp.llama_cpp  # noqa: F401
    except Exception as exc:  # never stop the interpreter from starting
        print(f"sitecustomize: llama_cpp preload failed: {exc}", flush=True)
