"""Engine errors, importable without llama.cpp. Each says what state it leaves behind;
the methods that raise them are in engine/contracts.py."""
from __future__ import annotations


class BackendError(RuntimeError):
    """llama.cpp refused to load or to run something.

    From `decode`: the batch's sequences and samplers are in an unknown state (llama.cpp
    keeps the micro-batches it managed to process); fail those requests and empty their
    sequences. From `apply_kv_ops` / `restore_sequence`: the sequence concerned is empty."""


class PrefixWindowGone(BackendError):
    """A cached prefix cannot be reused at this length: with a window-sized sliding-window cache
    (swa_full off) the cells its last window needs were already dropped.

    Raised by `apply_kv_ops`; the destination sequence is then empty. Expected, not a fault:
    start the prompt cold (prefill from position 0)."""


class NoKvRoom(BackendError):
    """llama_decode returned 1: the KV cache has no free cells for this batch.

    Raised by `decode` before anything changed: llama.cpp restores the KV cells as they were
    before the call, no sampler ran and no logprobs were kept. The caller may free cells
    (empty idle slots' cached prefixes) and decode the same chunks again; raised again, the
    batch does not fit even then and is handled like any failed decode."""


class SavedPrefixGone(LookupError):
    """The saved prefix state a plan named is no longer in the store (evicted, cleared by another
    process, unreadable). Raised by `PrefixStates.restore` before the slot was touched: evaluate
    the prompt instead."""
