"""A llama_batch over numpy buffers: filled with slices, never per element."""
from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np

import llama_cpp.llama_cpp as ll

from localllm.engine.errors import BackendError
from localllm.engine.scheduler import BatchChunk


class NumpyBatch:
    """A llama_batch whose arrays are numpy buffers, filled by slices, never per element."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq_id = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        # One seq id per token: row i's seq_id pointer points at self.seq_id[i], set once.
        base = self.seq_id.ctypes.data
        int_p = ctypes.POINTER(ctypes.c_int32)
        self._seq_ptrs = (int_p * capacity)(*(ctypes.cast(base + 4 * i, int_p) for i in range(capacity)))
        self.struct = ll.llama_batch()
        self.struct.token = self.token.ctypes.data_as(ctypes.POINTER(ll.llama_token))
        self.struct.embd = None
        self.struct.pos = self.pos.ctypes.data_as(ctypes.POINTER(ll.llama_pos))
        self.struct.n_seq_id = self.n_seq_id.ctypes.data_as(int_p)
        self.struct.seq_id = ctypes.cast(self._seq_ptrs, ctypes.POINTER(int_p))
        self.struct.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))

    def fill(self, chunks: Sequence[BatchChunk]) -> list[tuple[str, int]]:
        """Writes the chunks; returns (request id, batch row) for each logits row.

        Gathers plain lists first and writes each array once: a decode step is many
        one-token chunks, and five numpy slice writes per chunk cost more than the lists."""
        tokens: list[int] = []
        positions: list[int] = []
        seq_ids: list[int] = []
        rows: list[tuple[str, int]] = []
        for chunk in chunks:
            n = len(chunk.token_ids)
            tokens += chunk.token_ids
            positions += range(chunk.start_pos, chunk.start_pos + n)
            seq_ids += [chunk.slot_id] * n
            if chunk.wants_logits:
                rows.append((chunk.request.request_id, len(tokens) - 1))
        total = len(tokens)
        if total > self.capacity:
            raise BackendError(f"batch of {total} tokens exceeds n_batch {self.capacity}")
        self.token[:total] = tokens
        self.pos[:total] = positions
        self.seq_id[:total] = seq_ids
        self.logits[:total] = 0
        for _, row in rows:
            self.logits[row] = 1
        self.struct.n_tokens = total
        return rows

    def fill_sequences(self, sequences: Sequence[Sequence[int]]) -> None:
        """Each sequence from position 0 on its own seq id (its index), every row an output."""
        offset = 0
        for seq_id, token_ids in enumerate(sequences):
            end = offset + len(token_ids)
            self.token[offset:end] = token_ids
            self.pos[offset:end] = np.arange(len(token_ids), dtype=np.int32)
            self.seq_id[offset:end] = seq_id
            offset = end
        self.logits[:offset] = 1
        self.struct.n_tokens = offset

    def fill_sequence(self, token_ids: list[int], start_pos: int, seq_id: int) -> None:
        n = len(token_ids)
        self.token[:n] = token_ids
        self.pos[:n] = np.arange(start_pos, start_pos + n, dtype=np.int32)
        self.seq_id[:n] = seq_id
        self.logits[:n] = 1
        self.struct.n_tokens = n
