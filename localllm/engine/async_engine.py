"""AsyncEngine: the asyncio face of the engine thread.

The server calls `generate()` and iterates deltas; the engine thread hands
back each step's deltas with one `call_soon_threadsafe`, not one per token.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Sequence

from localllm.constraints import Grammar
from localllm.engine.contracts import ModelBackend, PrefixStateStore
from localllm.engine.core import EngineCore
from localllm.engine.disk_prefix import DiskPrefixes
from localllm.engine.messages import AbortRequest, AddRequest, Shutdown
from localllm.engine.request import Request
from localllm.engine.scheduler import Scheduler
from localllm.types import EngineStats, InvalidParam, PromptTooLong, QueueFull, SamplingParams, TokenDelta

log = logging.getLogger(__name__)


class AsyncEngine:
    """Owns the engine thread. Create, `await start()`, use, `await stop()`."""

    def __init__(
        self,
        backend: ModelBackend,
        *,
        model_name: str,
        num_slots: int,
        slot_ctx: int,
        num_batch_tokens: int,
        num_kv_cells_total: int,
        max_waiting: int = 64,
        prefix_store: PrefixStateStore | None = None,
    ) -> None:
        self.backend = backend
        self.model_name = model_name
        self.slot_ctx = slot_ctx
        self.max_in_flight = num_slots + max_waiting
        """Requests running or waiting; beyond it, generate() raises QueueFull at once."""
        self.prefix_store = prefix_store
        disk = DiskPrefixes(prefix_store, backend) if prefix_store is not None else None
        scheduler = Scheduler(num_slots, num_batch_tokens, backend.token_piece, backend.is_end_of_generation,
                              saved_prefix=disk.find if disk is not None else None)
        self._core = EngineCore(backend, scheduler, self._publish, model_name, num_kv_cells_total, disk)
        self._streams: dict[str, asyncio.Queue[TokenDelta]] = {}
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._core.run, name="localllm-engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Aborts what runs, stops the thread, frees llama.cpp memory."""
        if self._thread is not None:
            self._core.commands.put(Shutdown())
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self.prefix_store is not None:
            await asyncio.to_thread(self.prefix_store.close)  # waits for queued state writes
        self.backend.close()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return self.backend.tokenize(text, add_special=add_special, parse_special=True)

    async def embed(self, inputs: Sequence[str | Sequence[int]]) -> tuple[list, int]:
        """Pooled, normalised embeddings (numpy vectors) and the number of input tokens.

        Runs in a worker thread on a second context, not on the engine thread."""
        token_lists = [self.tokenize(x) if isinstance(x, str) else list(x) for x in inputs]
        limit = self.backend.max_embedding_tokens
        for i, token_ids in enumerate(token_lists):
            self._check_token_ids(token_ids, "input", f"input[{i}]")
            if len(token_ids) > limit:
                raise InvalidParam("input", f"input[{i}] has {len(token_ids)} tokens; the limit is {limit}")
        vectors = await asyncio.to_thread(self.backend.embed, token_lists)
        return vectors, sum(map(len, token_lists))

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self.backend.detokenize(token_ids)

    def token_bytes(self, token_id: int) -> bytes:
        return self.backend.token_piece(token_id)

    def json_grammar(self, schema: dict | None) -> Grammar:
        """The constraint for response_format (any JSON object, or one matching `schema`), built
        once: bounded, converted to GBNF and compiled by llama.cpp, which keeps it for the
        engine thread to clone. Raises InvalidParam. Blocking: call it from a worker thread."""
        grammar = self.backend.json_grammar(schema)
        self.backend.compile_grammar(grammar)
        return grammar

    def generate(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams,
        *,
        request_id: str | None = None,
        add_special: bool = True,
        cache_namespace: str = "",
    ) -> RequestStream:
        """Validates and queues a request; returns its stream of deltas.

        Cached prefixes are reused only between requests of the same `cache_namespace`.

        Raises InvalidParam / PromptTooLong at once, before any work is queued.
        Closing the stream before its last delta (client gone) aborts the request.
        """
        if not self.is_running:
            raise RuntimeError("engine is not running")
        if not self.has_room_for(1):
            raise QueueFull(f"all slots are busy and {self.max_in_flight} requests are in flight")
        prompt_ids = self.tokenize(prompt, add_special=add_special) if isinstance(prompt, str) else list(prompt)
        request = self._make_request(request_id or f"req-{next(self._ids)}", prompt_ids, params)
        request.cache_namespace = cache_namespace
        queue: asyncio.Queue[TokenDelta] = asyncio.Queue()
        self._streams[request.request_id] = queue
        self._core.commands.put(AddRequest(request))
        return RequestStream(self, request.request_id, queue)

    def has_room_for(self, num_requests: int) -> bool:
        return len(self._streams) + num_requests <= self.max_in_flight

    def abort(self, request_id: str) -> None:
        self._core.commands.put(AbortRequest(request_id))

    def stats(self) -> EngineStats:
        """The snapshot published after the engine's last step (never blocks)."""
        return self._core.stats

    def _make_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> Request:
        if request_id in self._streams:
            raise InvalidParam(None, f"request id {request_id!r} is already in use")
        self._check_token_ids(prompt_ids, "prompt", "the prompt")
        num_vocab = self.backend.num_vocab
        if any(not 0 <= token_id < num_vocab for token_id, _ in params.logit_bias):
            raise InvalidParam("logit_bias", f"token ids must be between 0 and {num_vocab - 1}")
        if params.grammar is not None and not isinstance(params.grammar, Grammar):
            raise InvalidParam("response_format", "the grammar was not built by json_grammar()")
        num_prompt = len(prompt_ids)
        room = self.slot_ctx - num_prompt
        if room < 1 or (params.max_tokens is not None and params.max_tokens > room):
            wanted = params.max_tokens or 1
            raise PromptTooLong(
                "messages" if params.max_tokens is None else "max_tokens",
                f"This model's context per slot is {self.slot_ctx} tokens; the prompt has "
                f"{num_prompt} tokens and {wanted} more were requested for the completion. "
                "Shorten the prompt or lower max_tokens.",
            )
        return Request(request_id, prompt_ids, params, max_new_tokens=params.max_tokens or room)

    def _check_token_ids(self, token_ids: list[int], param: str, what: str) -> None:
        """Out-of-vocabulary ids would make llama.cpp abort the process: refuse them here."""
        if not token_ids:
            raise InvalidParam(param, f"{what} is empty")
        if max(token_ids) >= self.backend.num_vocab or min(token_ids) < 0:
            raise InvalidParam(param, f"{what} has token ids outside 0..{self.backend.num_vocab - 1}")

    def _forget_stream(self, request_id: str) -> None:
        self._streams.pop(request_id, None)

    def _publish(self, deltas: list[TokenDelta]) -> None:
        """Engine thread: one wake-up of the event loop per step."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._dispatch, deltas)

    def _dispatch(self, deltas: list[TokenDelta]) -> None:
        for delta in deltas:
            queue = self._streams.get(delta.request_id)
            if queue is not None:
                queue.put_nowait(delta)


class RequestStream:
    """Deltas of one request. `aclose()` (or `async with`) aborts it if unfinished."""

    def __init__(self, engine: AsyncEngine, request_id: str, queue: asyncio.Queue[TokenDelta]) -> None:
        self.request_id = request_id
        self._engine = engine
        self._queue = queue
        self.finished = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> TokenDelta:
        if self.finished:
            raise StopAsyncIteration
        delta = await self._queue.get()
        if delta.finish_reason is not None:
            self._close(abort=False)
        return delta

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self.cancel()

    def cancel(self) -> None:
        """`aclose()` for code that cannot await: aborts the request if unfinished, forgets the stream."""
        self._close(abort=not self.finished)

    def _close(self, *, abort: bool) -> None:
        if abort:
            self._engine.abort(self.request_id)
        self.finished = True
        self._engine._forget_stream(self.request_id)
