"""Engine errors, importable without llama.cpp."""
from __future__ import annotations


class BackendError(RuntimeError):
    """llama.cpp refused to load or to run something."""


class PrefixWindowGone(BackendError):
    """A cached prefix cannot be reused at this length: with a window-sized sliding-window cache
    (swa_full off) the cells its last window needs were already dropped. Start the prompt cold."""


class NoKvRoom(BackendError):
    """llama_decode returned 1: the KV cache has no free cells for this batch."""
