"""The only package that imports llama_cpp: model and context (backend), batch, samplers.

Everything here runs on the engine thread, except tokenising, token pieces and
end-of-generation checks, which read the immutable vocabulary from any thread.
"""
# llama_cpp before numpy: on a CUDA machine (numpy 2.5, CUDA 13) importing numpy first made the
# model load segfault (docs/gpu.md); loading libllama first avoids it.
import llama_cpp.llama_cpp  # noqa: F401, I001

from localllm.engine.llama_backend.backend import BackendConfig, LlamaBackend

__all__ = ["BackendConfig", "LlamaBackend"]
