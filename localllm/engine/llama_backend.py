"""The only module that imports llama_cpp: model, context, batch, samplers.

Everything here runs on the engine thread, except `tokenize`, `token_piece`
and `is_end_of_generation`, which read the immutable vocabulary and are safe
from any thread.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import llama_cpp.llama_cpp as ll

from localllm.engine.errors import BackendError, NoKvRoom
from localllm.engine.scheduler import BatchChunk
from localllm.engine.slots import KvCopy, KvOp, KvTrim
from localllm.types import SamplingParams

log = logging.getLogger(__name__)

# Applied before penalties when the request sets no top_k: penalties and the
# final pick then touch a few dozen candidates instead of the whole vocabulary.
DEFAULT_TOP_K = 40


@dataclass(frozen=True, slots=True)
class BackendConfig:
    model_path: Path
    num_ctx: int
    """KV cells in all, shared by every slot (kv_unified)."""
    num_seq: int
    """llama.cpp sequences: one per slot."""
    num_batch: int
    num_threads: int
    num_gpu_layers: int = 0


_backend_init = threading.Lock()
_backend_ready = False


def _init_llama_once() -> None:
    global _backend_ready
    with _backend_init:
        if not _backend_ready:
            ll.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
            ll.llama_backend_init()
            _backend_ready = True


@ll.ggml_log_callback if hasattr(ll, "ggml_log_callback") else ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _LOG_CALLBACK(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:  # noqa: N802
    # llama.cpp is chatty on stderr; route it to logging at debug level, errors kept.
    message = text.decode("utf-8", "replace").rstrip()
    if message:
        log.log(logging.ERROR if level == 4 else logging.DEBUG, "llama.cpp: %s", message)


class LlamaBackend:
    """One loaded model with one context of `num_seq` sequences."""

    def __init__(self, config: BackendConfig) -> None:
        _init_llama_once()
        self.config = config
        model_params = ll.llama_model_default_params()
        model_params.n_gpu_layers = config.num_gpu_layers
        self._model = ll.llama_model_load_from_file(str(config.model_path).encode(), model_params)
        if not self._model:
            raise BackendError(f"llama.cpp could not load the model file {config.model_path}")
        ctx_params = ll.llama_context_default_params()
        ctx_params.n_ctx = config.num_ctx
        ctx_params.n_batch = ctx_params.n_ubatch = config.num_batch
        ctx_params.n_seq_max = config.num_seq
        ctx_params.n_threads = ctx_params.n_threads_batch = config.num_threads
        ctx_params.kv_unified = True  # shared prefixes are shared cells, not copies
        ctx_params.swa_full = True  # partial KV removal on sliding-window models needs it
        ctx_params.no_perf = True
        self._ctx = ll.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            ll.llama_model_free(self._model)
            raise BackendError("llama.cpp could not create a context (out of memory?)")
        self._memory = ll.llama_get_memory(self._ctx)
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.num_vocab = ll.llama_vocab_n_tokens(self._vocab)
        self.num_ctx = ll.llama_n_ctx(self._ctx)
        self.num_ctx_train = ll.llama_model_n_ctx_train(self._model)
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._batch = _NumpyBatch(config.num_batch)
        self._samplers: dict[str, ll.llama_sampler_p | _Greedy] = {}
        self._eog_token_ids: tuple[int, ...] | None = None

    # -- vocabulary (any thread) -------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (ll.llama_token * capacity)()
        n = ll.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, parse_special)
        if n < 0:  # buffer too small: -n is the size needed
            capacity = -n
            buf = (ll.llama_token * capacity)()
            n = ll.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, parse_special)
        return list(buf[:n])

    def token_piece(self, token_id: int) -> bytes:
        """The bytes a token renders to (control tokens render as nothing). Cached."""
        piece = self._pieces.get(token_id)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = ll.llama_token_to_piece(self._vocab, token_id, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = ll.llama_token_to_piece(self._vocab, token_id, buf, len(buf), 0, False)
            piece = self._pieces[token_id] = buf.raw[:n]
        return piece

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return b"".join(self.token_piece(t) for t in token_ids).decode("utf-8", "replace")

    def is_end_of_generation(self, token_id: int) -> bool:
        eog = self._eog.get(token_id)
        if eog is None:
            eog = self._eog[token_id] = bool(ll.llama_vocab_is_eog(self._vocab, token_id))
        return eog

    def bos_text(self) -> str:
        return self._token_text(ll.llama_vocab_bos(self._vocab))

    def eos_text(self) -> str:
        return self._token_text(ll.llama_vocab_eos(self._vocab))

    def _token_text(self, token_id: int) -> str:
        if token_id < 0:
            return ""
        return (ll.llama_vocab_get_text(self._vocab, token_id) or b"").decode("utf-8", "replace")

    def metadata(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def describe(self) -> str:
        buf = ctypes.create_string_buffer(256)
        ll.llama_model_desc(self._model, buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    # -- samplers (engine thread) ---------------------------------------------------

    def add_sampler(self, request_id: str, params: SamplingParams) -> None:
        self._samplers[request_id] = self._build_sampler(params)

    def remove_sampler(self, request_id: str) -> None:
        sampler = self._samplers.pop(request_id, None)
        if sampler is not None and not isinstance(sampler, _Greedy):
            ll.llama_sampler_free(sampler)

    def _build_sampler(self, params: SamplingParams) -> ll.llama_sampler_p | _Greedy:
        has_penalties = (
            params.repeat_penalty != 1.0 or params.frequency_penalty != 0.0 or params.presence_penalty != 0.0
        )
        biases = list(params.logit_bias)
        if params.ignore_eos:  # as llama.cpp does: end-of-generation tokens can never be drawn
            biases += [(t, float("-inf")) for t in self._end_of_generation_ids()]
        if params.is_greedy and not has_penalties:
            return _Greedy(np.array([t for t, _ in biases], dtype=np.int64),
                           np.array([b for _, b in biases], dtype=np.float32))
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        add = lambda s: ll.llama_sampler_chain_add(chain, s)  # noqa: E731
        if biases:
            array = (ll.llama_logit_bias * len(biases))(*biases)
            add(ll.llama_sampler_init_logit_bias(self.num_vocab, len(array), array))
        add(ll.llama_sampler_init_top_k(params.top_k or DEFAULT_TOP_K))
        if has_penalties:
            add(ll.llama_sampler_init_penalties(
                self.num_vocab, params.penalty_last_n, params.repeat_penalty,
                params.frequency_penalty, params.presence_penalty,
            ))
        if params.is_greedy:
            add(ll.llama_sampler_init_greedy())
            return chain
        if params.top_p < 1.0:
            add(ll.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(ll.llama_sampler_init_min_p(params.min_p, 1))
        add(ll.llama_sampler_init_temp(params.temperature))
        seed = ll.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        add(ll.llama_sampler_init_dist(seed))
        return chain

    # -- KV cache and decode (engine thread) -----------------------------------------

    def apply_kv_ops(self, ops: Sequence[KvOp]) -> None:
        for op in ops:
            if isinstance(op, KvTrim):
                if not ll.llama_memory_seq_rm(self._memory, op.slot_id, op.start, -1):
                    # Partial removal refused (some memory types): drop the whole sequence.
                    ll.llama_memory_seq_rm(self._memory, op.slot_id, -1, -1)
                    raise BackendError(f"could not trim sequence {op.slot_id} at {op.start}")
            elif isinstance(op, KvCopy):
                ll.llama_memory_seq_cp(self._memory, op.src_slot_id, op.dst_slot_id, 0, op.num_tokens)

    def clear_all(self) -> None:
        ll.llama_memory_clear(self._memory, True)

    def decode(self, chunks: Sequence[BatchChunk]) -> dict[str, int]:
        """Runs one llama_decode over the chunks; samples one token per logits row.

        Returns request id -> sampled token. Raises NoKvRoom or BackendError.
        """
        rows = self._batch.fill(chunks)
        rc = ll.llama_decode(self._ctx, self._batch.struct)
        if rc == 1:
            raise NoKvRoom("no free KV cells for this batch")
        if rc != 0:
            raise BackendError(f"llama_decode failed with code {rc}")
        sampled = {}
        for request_id, row in rows:
            sampler = self._samplers[request_id]
            if isinstance(sampler, _Greedy):
                # numpy's argmax over llama.cpp's own logits row (a view, no copy) costs
                # ~40 us; the C sampler first fills a 262k-entry candidate array (~650 us).
                logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(self._ctx, row), shape=(self.num_vocab,))
                if sampler.token_ids.size:
                    logits[sampler.token_ids] += sampler.biases  # the row is ours until the next decode
                sampled[request_id] = int(logits.argmax())
            else:
                sampled[request_id] = ll.llama_sampler_sample(sampler, self._ctx, row)
        return sampled

    def _end_of_generation_ids(self) -> tuple[int, ...]:
        if self._eog_token_ids is None:
            self._eog_token_ids = tuple(t for t in range(self.num_vocab) if ll.llama_vocab_is_eog(self._vocab, t))
        return self._eog_token_ids

    def logits_for(self, token_ids: Sequence[int], seq_id: int = 0) -> np.ndarray:
        """Logits after every token of `token_ids`, evaluated alone on `seq_id` (for tests
        and scoring; copies n x vocab floats, so not for the serving path)."""
        ll.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
        out = np.empty((len(token_ids), self.num_vocab), dtype=np.float32)
        n_batch = self.config.num_batch
        for start in range(0, len(token_ids), n_batch):
            part = list(token_ids[start:start + n_batch])
            self._batch.fill_sequence(part, start, seq_id)
            if ll.llama_decode(self._ctx, self._batch.struct) != 0:
                raise BackendError("llama_decode failed while scoring")
            for i in range(len(part)):
                ptr = ll.llama_get_logits_ith(self._ctx, i)
                out[start + i] = np.ctypeslib.as_array(ptr, shape=(self.num_vocab,))
        ll.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
        return out

    def close(self) -> None:
        for request_id in list(self._samplers):
            self.remove_sampler(request_id)
        if self._ctx:
            ll.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            ll.llama_model_free(self._model)
            self._model = None


@dataclass(frozen=True, slots=True)
class _Greedy:
    """Greedy decoding without penalties needs no llama.cpp sampler: biases, then argmax."""

    token_ids: np.ndarray
    biases: np.ndarray


class _NumpyBatch:
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
        """Writes the chunks; returns (request id, batch row) for each logits row."""
        total = sum(len(c.token_ids) for c in chunks)
        if total > self.capacity:
            raise BackendError(f"batch of {total} tokens exceeds n_batch {self.capacity}")
        offset = 0
        rows: list[tuple[str, int]] = []
        for chunk in chunks:
            n = len(chunk.token_ids)
            end = offset + n
            self.token[offset:end] = chunk.token_ids
            self.pos[offset:end] = np.arange(chunk.start_pos, chunk.start_pos + n, dtype=np.int32)
            self.seq_id[offset:end] = chunk.slot_id
            self.logits[offset:end] = 0
            if chunk.wants_logits:
                self.logits[end - 1] = 1
                rows.append((chunk.request.request_id, end - 1))
            offset = end
        self.struct.n_tokens = offset
        return rows

    def fill_sequence(self, token_ids: list[int], start_pos: int, seq_id: int) -> None:
        n = len(token_ids)
        self.token[:n] = token_ids
        self.pos[:n] = np.arange(start_pos, start_pos + n, dtype=np.int32)
        self.seq_id[:n] = seq_id
        self.logits[:n] = 1
        self.struct.n_tokens = n
