"""LlamaBackend: one model, one context, its batch and its per-request samplers.

Everything here runs on the engine thread, except `tokenize`, `token_piece`,
`is_end_of_generation`, `compile_grammar`, `metadata` and `embed`, which are safe from
any thread: they run inside an OpenGuard, and `close()` frees nothing before they return.
"""
from __future__ import annotations

import atexit
import ctypes
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import llama_cpp.llama_cpp as ll

from localllm.chat.families import Family
from localllm.chat.types import ToolChoice, ToolSpec
from localllm.constraints import Grammar
from localllm.engine.errors import BackendError, NoKvRoom, PrefixWindowGone
from localllm.engine.llama_backend import grammar as gbnf, rpc, sampling
from localllm.engine.llama_backend.batch import NumpyBatch
from localllm.engine.llama_backend.embedding import MAX_INPUT_TOKENS, EmbeddingContext
from localllm.engine.llama_backend.lifetime import OpenGuard, while_open
from localllm.engine.scheduler import BatchChunk
from localllm.engine.slots import KvCopy, KvOp, KvTrim
from localllm.types import SamplingParams, TokenLogprob

log = logging.getLogger(__name__)


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
    on_progress: Callable[[float], None] | None = None
    """Called with the load fraction (0..1) while llama.cpp reads the weights."""
    rpc_servers: tuple[str, ...] = ()
    """rpc-server endpoints whose devices take layers (rpc.py); empty: local devices only."""
    swa_full: bool = True
    """Full-context KV cache for sliding-window layers (any prefix length reusable); False: window-sized."""
    shown_control_texts: tuple[str, ...] = ()
    """Texts of control tokens that render as their text instead of nothing: the tool-call and
    reasoning markers the chat layer parses (Mistral's [TOOL_CALLS] is a control token)."""


_backend_init = threading.Lock()
_backend_ready = False


def _init_llama_once() -> None:
    global _backend_ready
    with _backend_init:
        if not _backend_ready:
            ll.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
            ll.llama_backend_init()
            atexit.register(_detach_logging)
            _backend_ready = True


def _detach_logging() -> None:
    """At exit, before the interpreter is torn down: native code that logs later (static
    destructors, lingering threads) must not call back into a finalised Python."""
    ll.llama_log_set(ll.llama_log_callback(), ctypes.c_void_p(0))  # NULL: llama.cpp's own stderr logger


@ll.ggml_log_callback if hasattr(ll, "ggml_log_callback") else ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _LOG_CALLBACK(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:  # noqa: N802
    # llama.cpp is chatty on stderr; route it to logging at debug level, errors kept.
    message = text.decode("utf-8", "replace").rstrip()
    if message:
        log.log(logging.ERROR if level == 4 else logging.DEBUG, "llama.cpp: %s", message)


def cuda_graphs_off_for(num_gpu_layers: int, num_layers: int) -> bool:
    """True for a partial offload (some blocks, or only the output layer, left on the CPU).

    On an H100 such a split with CUDA graphs died in cudaGraphLaunch ("illegal instruction")
    at 64 concurrent streams, every time; with GGML_CUDA_DISABLE_GRAPHS=1 the same load ran
    clean (1,008 tok/s), and 8 or 16 streams ran with graphs (docs/gpu.md, finding 3)."""
    return 0 < num_gpu_layers <= num_layers


class LlamaBackend:
    """One loaded model with one context of `num_seq` sequences: implements
    `contracts.ModelBackend` (the methods' contracts are written there)."""

    num_vocab: int
    num_ctx: int
    max_embedding_tokens: int
    layer_split: dict[str, int]

    def __init__(self, config: BackendConfig) -> None:
        _init_llama_once()
        self.config = config
        model_params = ll.llama_model_default_params()
        model_params.n_gpu_layers = config.num_gpu_layers
        rpc_devices = rpc.add_servers(config.rpc_servers) if config.rpc_servers else []
        if config.on_progress is not None:
            report = config.on_progress
            # Kept referenced until the load returns: llama.cpp calls it from this thread.
            callback = ll.llama_progress_callback(lambda fraction, _data: (report(float(fraction)), True)[1])
            model_params.progress_callback = callback
        self._model = ll.llama_model_load_from_file(str(config.model_path).encode(), model_params)
        if not self._model:
            raise BackendError(f"llama.cpp could not load the model file {config.model_path}")
        if cuda_graphs_off_for(config.num_gpu_layers, ll.llama_model_n_layer(self._model)) \
                and "GGML_CUDA_DISABLE_GRAPHS" not in os.environ:
            # Read once per process, at the first graph llama.cpp runs: before any decode here.
            os.environ["GGML_CUDA_DISABLE_GRAPHS"] = "1"
            log.info("partial GPU offload: CUDA graphs off (they crashed llama.cpp at 64 streams, docs/gpu.md)")
        self.layer_split = rpc.layer_split(rpc.offload_devices(rpc_devices), ll.llama_model_n_layer(self._model),
                                           config.num_gpu_layers) if rpc_devices else {}
        """Layers per device (output layer included) when the model is split over RPC servers."""
        if self.layer_split:
            log.info("rpc: layers per device: %s", ", ".join(f"{k} {v}" for k, v in self.layer_split.items()))
        ctx_params = ll.llama_context_default_params()
        ctx_params.n_ctx = config.num_ctx
        ctx_params.n_batch = ctx_params.n_ubatch = config.num_batch
        ctx_params.n_seq_max = config.num_seq
        ctx_params.n_threads = ctx_params.n_threads_batch = config.num_threads
        ctx_params.kv_unified = True  # shared prefixes are shared cells, not copies
        # Full-size sliding-window cache: prefixes stay reusable at any length (partial removal
        # keeps every cell). Off, llama.cpp drops cells older than the window and apply_kv_ops
        # refuses a reuse whose last window is gone (PrefixWindowGone).
        ctx_params.swa_full = config.swa_full
        ctx_params.no_perf = True
        self._ctx = ll.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            ll.llama_model_free(self._model)
            raise BackendError("llama.cpp could not create a context (out of memory?)")
        self._memory = ll.llama_get_memory(self._ctx)
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.num_vocab = ll.llama_vocab_n_tokens(self._vocab)
        self._window = 0 if config.swa_full else ll.llama_model_n_swa(self._model)
        """Sliding window when its cache is window-sized (reuse must check it), else 0."""
        self.num_ctx = ll.llama_n_ctx(self._ctx)
        self.num_ctx_train = ll.llama_model_n_ctx_train(self._model)
        self.max_embedding_tokens = MAX_INPUT_TOKENS
        self._pieces: dict[int, bytes] = {}
        self._batch = NumpyBatch(config.num_batch)
        self._logits_row_type = ctypes.c_float * self.num_vocab
        self._logits_views: dict[int, np.ndarray] = {}
        self._samplers: dict[str, sampling.Sampler] = {}
        # Scanned here, on the loading thread: the first grammar or ignore_eos request used to
        # pay for 262k ctypes calls on the engine thread.
        self._eog_token_ids = tuple(t for t in range(self.num_vocab) if ll.llama_vocab_is_eog(self._vocab, t))
        self._eog_set = frozenset(self._eog_token_ids)
        self._grammars = gbnf.CompiledGrammars(self._vocab)
        self._logprobs_wanted: dict[str, int] = {}
        self._logprobs: dict[str, TokenLogprob] = {}
        self._embedding: EmbeddingContext | None = None
        self._embedding_init = threading.Lock()
        self._guard = OpenGuard()
        """Calls from other threads; close() waits for them before freeing anything."""
        self._shown_token_ids = self._control_tokens(config.shown_control_texts)

    # -- vocabulary (any thread) -------------------------------------------------

    @while_open
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
            piece = self._pieces[token_id] = self._piece(token_id)
        return piece

    @while_open
    def _piece(self, token_id: int) -> bytes:
        special = token_id in self._shown_token_ids
        buf = ctypes.create_string_buffer(64)
        n = ll.llama_token_to_piece(self._vocab, token_id, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self._vocab, token_id, buf, len(buf), 0, special)
        return buf.raw[:n]

    def _control_tokens(self, texts: tuple[str, ...]) -> frozenset[int]:
        """The control tokens (never end-of-generation ones) that `texts` name in this vocabulary;
        a text that is not a single control token here is ignored."""
        found = set()
        for text in texts:
            ids = self.tokenize(text, add_special=False, parse_special=True)
            if (len(ids) == 1 and ll.llama_vocab_get_attr(self._vocab, ids[0]) & ll.LLAMA_TOKEN_ATTR_CONTROL
                    and not ll.llama_vocab_is_eog(self._vocab, ids[0])):
                found.add(ids[0])
        return frozenset(found)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return b"".join(self.token_piece(t) for t in token_ids).decode("utf-8", "replace")

    def is_end_of_generation(self, token_id: int) -> bool:
        return token_id in self._eog_set  # scanned at load: no llama.cpp call per sampled token

    def bos_text(self) -> str:
        return self._token_text(ll.llama_vocab_bos(self._vocab))

    def eos_text(self) -> str:
        return self._token_text(ll.llama_vocab_eos(self._vocab))

    @while_open
    def _token_text(self, token_id: int) -> str:
        if token_id < 0:
            return ""
        return (ll.llama_vocab_get_text(self._vocab, token_id) or b"").decode("utf-8", "replace")

    @while_open
    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value as text, whole (chat templates run to many kilobytes)."""
        buf = ctypes.create_string_buffer(4096)
        n = ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):  # the return value is the full length, like snprintf
            buf = ctypes.create_string_buffer(n + 1)
            ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    @while_open
    def describe(self) -> str:
        buf = ctypes.create_string_buffer(256)
        ll.llama_model_desc(self._model, buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    # -- samplers (engine thread) ---------------------------------------------------

    def add_sampler(self, request_id: str, params: SamplingParams) -> None:
        eog = self._eog_token_ids if params.ignore_eos or params.grammar else ()
        self._samplers[request_id] = sampling.build_sampler(params, self.num_vocab, eog, self._grammars)
        if params.logprobs is not None:
            self._logprobs_wanted[request_id] = params.logprobs

    def remove_sampler(self, request_id: str) -> None:
        self._logprobs_wanted.pop(request_id, None)
        sampler = self._samplers.pop(request_id, None)
        if sampler is not None:
            sampler.free()

    @while_open
    def compile_grammar(self, grammar: Grammar) -> None:
        """Parses the grammar once and keeps it for add_sampler to clone; raises InvalidParam if
        llama.cpp refuses it. Any thread (a worker: the engine thread then only clones)."""
        self._grammars.compile(grammar)

    @staticmethod
    def json_grammar(schema: dict | None) -> Grammar:
        """Bounded GBNF for response_format (see localllm.constraints). Blocking: a worker thread."""
        return gbnf.json_grammar(schema)

    @staticmethod
    def tool_grammar(family: Family, tools: list[ToolSpec], choice: ToolChoice, parallel: bool,
                     response_schema: dict | None = None, *, starts_in_reasoning: bool = False) -> Grammar | None:
        """Bounded GBNF for tool calls (see localllm.tool_grammar). Blocking: a worker thread."""
        return gbnf.tool_grammar(family, tools, choice, parallel, response_schema,
                                 starts_in_reasoning=starts_in_reasoning)

    def take_logprobs(self) -> dict[str, TokenLogprob]:
        """Logprobs computed by the last decode for requests that asked; hands them over."""
        taken, self._logprobs = self._logprobs, {}
        return taken

    # -- KV cache and decode (engine thread) -----------------------------------------

    def apply_kv_ops(self, ops: Sequence[KvOp]) -> None:
        for op in ops:
            if isinstance(op, KvTrim):
                if not ll.llama_memory_seq_rm(self._memory, op.slot_id, op.start, -1):
                    # Partial removal refused (some memory types): drop the whole sequence.
                    ll.llama_memory_seq_rm(self._memory, op.slot_id, -1, -1)
                    raise BackendError(f"could not trim sequence {op.slot_id} at {op.start}")
                self._check_window(op.slot_id, op.start)
            elif isinstance(op, KvCopy):
                ll.llama_memory_seq_cp(self._memory, op.src_slot_id, op.dst_slot_id, 0, op.num_tokens)
                self._check_window(op.dst_slot_id, op.num_tokens)

    def _check_window(self, seq_id: int, length: int) -> None:
        """With a window-sized sliding-window cache, decoding at `length` needs the positions
        from length - window on: llama.cpp would attend over the hole without a word."""
        if not self._window or length == 0:
            return
        oldest = ll.llama_memory_seq_pos_min(self._memory, seq_id)
        if oldest < 0 or oldest > max(0, length - self._window):
            ll.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
            raise PrefixWindowGone(f"sequence {seq_id}: positions from {oldest} kept, "
                                   f"{max(0, length - self._window)} needed to continue at {length}")

    def save_sequence(self, seq_id: int) -> bytes:
        """The KV state of one sequence, as llama.cpp serialises it (engine thread)."""
        size = ll.llama_state_seq_get_size(self._ctx, seq_id)
        buf = (ctypes.c_uint8 * size)()
        written = ll.llama_state_seq_get_data(self._ctx, buf, size, seq_id)
        if written == 0:
            raise BackendError(f"could not save the state of sequence {seq_id}")
        return ctypes.string_at(buf, written)

    def restore_sequence(self, seq_id: int, data: bytes) -> int:
        """Replaces a sequence's KV cells with a saved state; returns how many tokens it holds."""
        ll.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if ll.llama_state_seq_set_data(self._ctx, buf, len(data), seq_id) == 0:
            ll.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
            raise BackendError(f"could not restore a saved state into sequence {seq_id}")
        return ll.llama_memory_seq_pos_max(self._memory, seq_id) + 1

    def state_format(self) -> str:
        """What a saved sequence state depends on besides the model file."""
        return f"ctx{self.num_ctx}:seq{self.config.num_seq}:f16:swa_full:unified"

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
            logits = self._logits_row(row)
            num_top = self._logprobs_wanted.get(request_id)
            raw = logits.copy() if num_top is not None else None  # samplers may bias the row in place
            token = sampled[request_id] = self._samplers[request_id].sample(self._ctx, row, logits)
            if raw is not None:
                self._logprobs[request_id] = sampling.logprob_of(raw, token, num_top)
        return sampled

    def _logits_row(self, row: int) -> np.ndarray:
        """A float32 view of batch row `row`'s logits. Views are cached by address: llama.cpp
        keeps its output buffer between steps, and np.ctypeslib.as_array costs ~10 us a call."""
        address = ctypes.addressof(ll.llama_get_logits_ith(self._ctx, row).contents)
        view = self._logits_views.get(address)
        if view is None:
            if len(self._logits_views) > 4 * self.config.num_batch:  # the buffer moved: drop old views
                self._logits_views.clear()
            view = np.frombuffer(self._logits_row_type.from_address(address), dtype=np.float32)
            self._logits_views[address] = view
        return view

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

    @while_open
    def embed(self, inputs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Blocking, any thread but the engine's: pooled embeddings from a second context."""
        with self._embedding_init:
            if self._embedding is None:
                self._embedding = EmbeddingContext(self._model, self.config.num_threads, lambda: self._guard.closed)
        return self._embedding.embed(inputs)

    def close(self) -> None:
        """Frees the context and the model. Call after the engine thread has ended; blocks
        until calls from other threads (an embedding job, a tokenisation) have returned and
        refuses later ones (BackendClosed), so none can touch freed memory. Idempotent."""
        self._guard.close()
        if self._embedding is not None:
            self._embedding.close()
            self._embedding = None
        for request_id in list(self._samplers):
            self.remove_sampler(request_id)
        self._grammars.close()
        self._logits_views.clear()
        if self._ctx:
            ll.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            ll.llama_model_free(self._model)
            self._model = None
