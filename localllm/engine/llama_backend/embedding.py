"""Pooled sentence embeddings from a second, embeddings-only context on the loaded model."""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

import llama_cpp.llama_cpp as ll

from localllm.engine.errors import BackendError
from localllm.engine.llama_backend.batch import NumpyBatch
from localllm.engine.llama_backend.lifetime import BackendClosed

MAX_INPUT_TOKENS = 2048
"""One input must fit one micro-batch: pooling needs all its tokens at once."""
MAX_SEQUENCES = 16


class EmbeddingContext:
    """Created on first use; one embedding job at a time (the lock), off the engine thread."""

    def __init__(self, model: ll.llama_model_p, num_threads: int,
                 closing: Callable[[], bool] = lambda: False) -> None:
        self._closing = closing
        """True once the model is closing: a running job stops before its next decode, so an
        unload or a shutdown waits for one decode, not for the whole job."""
        params = ll.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = MAX_INPUT_TOKENS
        params.n_seq_max = MAX_SEQUENCES
        params.n_threads = params.n_threads_batch = num_threads
        params.embeddings = True
        params.pooling_type = ll.LLAMA_POOLING_TYPE_MEAN
        params.kv_unified = True
        params.no_perf = True
        self._ctx = ll.llama_init_from_model(model, params)
        if not self._ctx:
            raise BackendError("llama.cpp could not create the embedding context")
        self._memory = ll.llama_get_memory(self._ctx)
        self._dim = ll.llama_model_n_embd(model)
        self._batch = NumpyBatch(MAX_INPUT_TOKENS)
        self._lock = threading.Lock()

    def embed(self, inputs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """L2-normalised mean-pooled vectors, one per input (each at most MAX_INPUT_TOKENS)."""
        with self._lock:
            out: list[np.ndarray] = []
            group: list[Sequence[int]] = []
            for token_ids in inputs:
                if sum(map(len, group)) + len(token_ids) > MAX_INPUT_TOKENS or len(group) == MAX_SEQUENCES:
                    out += self._embed_group(group)
                    group = []
                group.append(token_ids)
            return out + (self._embed_group(group) if group else [])

    def _embed_group(self, group: list[Sequence[int]]) -> list[np.ndarray]:
        if self._closing():
            raise BackendClosed("the model is closing")
        ll.llama_memory_clear(self._memory, True)
        self._batch.fill_sequences(group)
        if ll.llama_decode(self._ctx, self._batch.struct) != 0:
            raise BackendError("llama_decode failed while embedding")
        vectors = []
        for seq_id in range(len(group)):
            pooled = ll.llama_get_embeddings_seq(self._ctx, seq_id)
            if not pooled:
                raise BackendError("the model returned no pooled embedding")
            vector = np.ctypeslib.as_array(pooled, shape=(self._dim,)).astype(np.float32)
            norm = float(np.linalg.norm(vector))
            vectors.append(vector / norm if norm > 0 else vector)
        return vectors

    def close(self) -> None:
        if self._ctx:
            ll.llama_free(self._ctx)
            self._ctx = None
