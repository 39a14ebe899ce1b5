"""The only package that imports llama_cpp: model and context (backend), batch, samplers.

Everything here runs on the engine thread, except tokenising, token pieces and
end-of-generation checks, which read the immutable vocabulary from any thread.
"""
from localllm.engine.llama_backend.backend import BackendConfig, LlamaBackend

__all__ = ["BackendConfig", "LlamaBackend"]
