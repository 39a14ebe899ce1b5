"""AsyncEngine: the asyncio face of the engine thread.

The server calls `generate()` and iterates deltas; the engine thread hands
back each step's deltas with one `call_soon_threadsafe`, not one per token.
"""
from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import itertools
import logging
import threading
from collections.abc import Callable, Sequence

from localllm.chat.families import Family
from localllm.chat.types import ToolChoice, ToolSpec
from localllm.constraints import Grammar
from localllm.engine.contracts import ModelBackend, PrefixStateStore
from localllm.engine.core import EngineCore
from localllm.engine.messages import AbortRequest, AddRequest, Shutdown
from localllm.engine.prefix_states import PrefixStates
from localllm.engine.request import Request
from localllm.engine.scheduler import Scheduler
from localllm.types import EngineStats, InvalidParam, PromptTooLong, QueueFull, SamplingParams, TokenDelta

log = logging.getLogger(__name__)

ESTIMATE_CHUNK_CHARS = 2048
"""llama.cpp's tokenizer is quadratic in the special and user-defined tokens of one text (it walks
its fragment list per match; Gemma's line breaks are such tokens: 200 KB of "word\\n" took 42 s).
A text longer than this is first counted in chunks of this size, so one far over its limit is
refused after limit-sized work; the exact tokenisation runs only on texts that may fit."""


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
        prefix_state_store: PrefixStateStore | None = None,
    ) -> None:
        self.backend = backend
        self.model_name = model_name
        self.slot_ctx = slot_ctx
        self.max_in_flight = num_slots + max_waiting
        """Requests running or waiting; beyond it, generate() raises QueueFull at once."""
        self.prefix_state_store = prefix_state_store
        """Prefix states on disk, if any (the prefix cache in memory is the slots' KV cells)."""
        states = PrefixStates(prefix_state_store, backend) if prefix_state_store is not None else None
        scheduler = Scheduler(num_slots, num_batch_tokens, backend.token_piece, backend.is_end_of_generation,
                              saved_prefix=states.find if states is not None else None)
        self._core = EngineCore(backend, scheduler, self._publish, model_name, num_kv_cells_total, states)
        self._streams: dict[str, asyncio.Queue[TokenDelta]] = {}
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._embed_workers = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="localllm-embed")
        self._num_embedding_jobs = 0
        """Embedding calls admitted and not yet finished; they count toward max_in_flight."""

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._core.run, name="localllm-engine", daemon=True)
        self._thread.start()
        atexit.register(self._stop_thread_at_exit)

    async def stop(self) -> None:
        """Aborts what runs, then frees llama.cpp memory once nothing can call into it: the
        engine thread (decode, sampler frees, state saves and restores) has ended, the KV
        writer has drained, backend.close() has waited out calls from other threads (a running
        embedding job stops at its next decode) and the embedding worker is joined. Cancelled
        midway, it frees nothing (a leak at exit, never a crash)."""
        if self._thread is not None:
            self._core.commands.put(Shutdown())
            await asyncio.to_thread(self._thread.join)
            self._thread = None
            atexit.unregister(self._stop_thread_at_exit)
        self._embed_workers.shutdown(wait=False, cancel_futures=True)  # queued jobs never start
        if self.prefix_state_store is not None:
            await asyncio.to_thread(self.prefix_state_store.close)  # waits for queued state writes
        await asyncio.to_thread(self.backend.close)
        await asyncio.to_thread(self._embed_workers.shutdown)  # its job ended inside backend.close's wait

    def _stop_thread_at_exit(self) -> None:
        """An exit that skipped stop(): end the (daemon) engine thread before the interpreter
        is torn down under it in the middle of a llama.cpp call."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._core.commands.put(Shutdown())
            thread.join(timeout=30.0)

    @property
    def layer_split(self) -> dict[str, int]:
        """Layers per RPC device (empty without RPC servers), for /v1/stats."""
        return dict(self.backend.layer_split)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True,
                 max_tokens: int | None = None, param: str = "prompt") -> list[int]:
        """Blocking (call off the event loop for long texts). With `max_tokens`, raises
        PromptTooLong for a text that clearly has more tokens, without tokenising all of it."""
        if max_tokens is not None and len(text) > ESTIMATE_CHUNK_CHARS:
            self._refuse_if_longer(text, parse_special, max_tokens, param)
        return self.backend.tokenize(text, add_special=add_special, parse_special=parse_special)

    def _refuse_if_longer(self, text: str, parse_special: bool, max_tokens: int, param: str) -> None:
        """Counts chunk by chunk, with slack: a cut inside a special token's text (parsed) or a
        long whitespace run adds tokens, so only a text clearly over the limit is refused here."""
        num_tokens = 0
        for num_chunks, start in enumerate(range(0, len(text), ESTIMATE_CHUNK_CHARS), 1):
            chunk = text[start:start + ESTIMATE_CHUNK_CHARS]
            num_tokens += len(self.backend.tokenize(chunk, add_special=False, parse_special=parse_special))
            if num_tokens > max_tokens + 16 * num_chunks:
                raise PromptTooLong(param, f"The prompt has more than {max_tokens} tokens, the most this "
                                           f"model takes here (its context per slot is {self.slot_ctx} tokens).")

    async def embed(self, inputs: Sequence[str | Sequence[int]], *, max_total_tokens: int = 0,
                    on_tokens: Callable[[int], None] | None = None) -> tuple[list, int]:
        """Pooled, normalised embeddings (numpy vectors) and the number of input tokens.

        Admitted like generation (QueueFull past the same in-flight bound), then tokenised and
        run one job at a time on the embedding worker, a second context: never the engine thread
        nor the default executor, so model loads and cache I/O do not wait behind embeddings.
        InvalidParam("input") past `max_total_tokens` (0: no cap) over all inputs; `on_tokens(total)`
        runs on the worker after tokenising and before any embedding work (it may raise to refuse)."""
        self._refuse_if_full()
        loop = asyncio.get_running_loop()
        self._num_embedding_jobs += 1
        job = self._embed_workers.submit(self._embed_now, list(inputs), max_total_tokens, on_tokens)
        # Counted until the job is done or dropped from the queue, not until its caller goes away.
        job.add_done_callback(lambda _: _call_soon(loop, self._embedding_job_done))
        return await asyncio.wrap_future(job)

    def _embed_now(self, inputs: list[str | Sequence[int]], max_total_tokens: int,
                   on_tokens: Callable[[int], None] | None) -> tuple[list, int]:
        limit = self.backend.max_embedding_tokens
        token_lists, num_tokens = [], 0
        for i, x in enumerate(inputs):
            token_ids = self.tokenize(x, max_tokens=limit, param="input") if isinstance(x, str) else list(x)
            self._check_token_ids(token_ids, "input", f"input[{i}]")
            if len(token_ids) > limit:
                raise InvalidParam("input", f"input[{i}] has {len(token_ids)} tokens; the limit is {limit}")
            num_tokens += len(token_ids)
            if max_total_tokens and num_tokens > max_total_tokens:  # stop tokenising at once
                raise InvalidParam("input", f"the inputs have more than {max_total_tokens} tokens in all "
                                   f"({num_tokens} up to input[{i}]); that is the limit per request")
            token_lists.append(token_ids)
        if on_tokens is not None:
            on_tokens(num_tokens)
        return self.backend.embed(token_lists), num_tokens

    def _embedding_job_done(self) -> None:
        self._num_embedding_jobs -= 1

    @property
    def num_vocab(self) -> int:
        return self.backend.num_vocab

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

    def tool_grammar(self, family: Family, tools: list[ToolSpec], choice: ToolChoice, parallel: bool,
                     response_schema: dict | None = None, *, starts_in_reasoning: bool = False) -> Grammar | None:
        """The constraint that makes the family's tool calls valid by construction: forced for
        tool_choice required / named, lazy (asleep until the family's call opener) for auto,
        None for none (localllm.tool_grammar says what each family's grammar allows). Built and
        compiled like json_grammar. Raises InvalidParam ("tools", "tool_choice" or
        "response_format"). Blocking: call it from a worker thread."""
        grammar = self.backend.tool_grammar(family, tools, choice, parallel, response_schema,
                                            starts_in_reasoning=starts_in_reasoning)
        if grammar is not None:
            try:
                self.backend.compile_grammar(grammar)
            except InvalidParam as exc:
                raise InvalidParam("tools", f"tools: {str(exc).removeprefix('response_format: ')}") from None
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
        A text prompt is tokenised here, on the caller's thread: the server passes token ids.
        """
        if not self.is_running:
            raise RuntimeError("engine is not running")
        self._refuse_if_full()
        prompt_ids = self.tokenize(prompt, add_special=add_special) if isinstance(prompt, str) else list(prompt)
        request = self._make_request(request_id or f"req-{next(self._ids)}", prompt_ids, params)
        request.cache_namespace = cache_namespace
        queue: asyncio.Queue[TokenDelta] = asyncio.Queue()
        self._streams[request.request_id] = queue
        self._core.commands.put(AddRequest(request))
        return RequestStream(self, request.request_id, queue)

    def has_room_for(self, num_requests: int) -> bool:
        return len(self._streams) + self._num_embedding_jobs + num_requests <= self.max_in_flight

    def _refuse_if_full(self) -> None:
        """One more request (generation or embedding) past max_in_flight: QueueFull, at once."""
        if not self.has_room_for(1):
            raise QueueFull(f"all slots are busy and {self.max_in_flight} requests are in flight")

    def abort(self, request_id: str) -> None:
        self._core.commands.put(AbortRequest(request_id))

    def stats(self) -> EngineStats:
        """The snapshot published after the engine's last step (never blocks)."""
        return self._core.stats

    def _make_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> Request:
        if request_id in self._streams:
            raise InvalidParam(None, f"request id {request_id!r} is already in use")
        self.check_prompt(prompt_ids, params)
        num_vocab = self.backend.num_vocab
        if any(not 0 <= token_id < num_vocab for token_id, _ in params.logit_bias):
            raise InvalidParam("logit_bias", f"token ids must be between 0 and {num_vocab - 1}")
        if params.top_k > num_vocab:
            raise InvalidParam("top_k", f"top_k must be at most the vocabulary size ({num_vocab})")
        if params.grammar is not None and not isinstance(params.grammar, Grammar):
            raise InvalidParam("response_format", "the grammar was not built by json_grammar() or tool_grammar()")
        room = self.slot_ctx - len(prompt_ids)
        return Request(request_id, prompt_ids, params, max_new_tokens=params.max_tokens or room)

    def check_prompt(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """The checks that depend on the prompt (cheap): token ids in the vocabulary, and room in
        one slot's context for the prompt plus max_tokens. Raises InvalidParam / PromptTooLong."""
        self._check_token_ids(prompt_ids, "prompt", "the prompt")
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


def _call_soon(loop: asyncio.AbstractEventLoop, callback) -> None:
    if not loop.is_closed():
        loop.call_soon_threadsafe(callback)


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
