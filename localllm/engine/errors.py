"""Engine errors, importable without llama.cpp."""
from __future__ import annotations


class BackendError(RuntimeError):
    """llama.cpp refused to load or to run something."""


class NoKvRoom(BackendError):
    """llama_decode returned 1: the KV cache has no free cells for this batch."""
