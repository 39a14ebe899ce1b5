"""Runs the choices of one API request on the engine and merges their deltas."""
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from localllm.engine.async_engine import AsyncEngine, RequestStream
from localllm.server.errors import ApiError, bad_request
from localllm.server.metrics import ServerMetrics
from localllm.server.schemas import GenerationRequest
from localllm.types import FinishReason, InvalidParam, QueueFull, SamplingParams, TokenDelta


@dataclass(slots=True)
class Choice:
    """One choice's counts and timings (usage, metrics, Ollama's durations); its text and
    logprobs reach the client as ChatCall events and are not kept here."""

    index: int
    finish_reason: FinishReason | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_generated_tokens: int = 0
    first_token_s: float | None = None
    last_token_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)

    def absorb(self, delta: TokenDelta) -> None:
        if delta.token_ids:
            now = time.monotonic()
            if self.first_token_s is None:
                self.first_token_s = now
            else:
                self.itl_s.append(now - self.last_token_s)
            self.last_token_s = now
        self.finish_reason = delta.finish_reason or self.finish_reason
        self.num_prompt_tokens = delta.num_prompt_tokens
        self.num_cached_tokens = delta.num_cached_tokens
        self.num_generated_tokens = delta.num_generated_tokens


async def start_choices(engine: AsyncEngine, gen: GenerationRequest, add_special: bool, cache_namespace: str = "",
                        reserve: Callable[[list[list[int]]], None] | None = None, *,
                        max_tokens_is_cap: bool = False) -> list[RequestStream]:
    """Queues every choice, or none: every prompt is tokenised (off the event loop) and checked
    before the first is queued, and a choice that cannot be queued cancels the ones before it.
    `reserve` sees the prompts' tokens just before queuing (per-minute token limits; it may
    raise). Prefix reuse stays within `cache_namespace` (server/tenants.py). With
    `max_tokens_is_cap`, a max_tokens past a prompt's room in its slot stops at the slot's end
    instead of being refused (Ollama's num_predict)."""
    num_choices = len(gen.prompts) * gen.n
    _check_room(engine, num_choices)
    try:
        prompt_ids = await asyncio.to_thread(_tokenised, engine, gen.prompts, add_special)
        params = [_capped(gen.params, engine.slot_ctx - len(ids)) if max_tokens_is_cap else gen.params
                  for ids in prompt_ids]
        for ids, prompt_params in zip(prompt_ids, params):
            engine.check_prompt(ids, prompt_params)
    except InvalidParam as exc:
        raise bad_request(str(exc), exc.param) from None
    _check_room(engine, num_choices)  # again: other requests were admitted while we tokenised
    if reserve is not None:
        reserve(prompt_ids)
    streams: list[RequestStream] = []
    try:
        for ids, prompt_params in zip(prompt_ids, params):
            for _ in range(gen.n):
                streams.append(engine.generate(ids, prompt_params, cache_namespace=cache_namespace))
    except BaseException as exc:
        for stream in streams:  # aborted and forgotten: nobody will read them
            stream.cancel()
        if isinstance(exc, InvalidParam):
            raise bad_request(str(exc), exc.param) from None
        if isinstance(exc, QueueFull):
            raise queue_full() from None
        if isinstance(exc, RuntimeError):
            raise ApiError(503, f"The model is not ready: {exc}", type="server_error", code="model_not_ready") from None
        raise
    return streams


def _capped(params: SamplingParams, room: int) -> SamplingParams:
    """`params` with max_tokens lowered to `room` when it asks for more (and room is left)."""
    if params.max_tokens is None or room < 1 or params.max_tokens <= room:
        return params
    return dataclasses.replace(params, max_tokens=room)


def _tokenised(engine: AsyncEngine, prompts: list[str | list[int]], add_special: bool) -> list[list[int]]:
    """Worker thread. /v1/completions prompts are raw text by design: special tokens in them are
    parsed (a client may write its own template); chat prompts arrive here already tokenised."""
    limit = engine.slot_ctx  # "messages" names a too-long prompt, as AsyncEngine.check_prompt does
    return [engine.tokenize(p, add_special=add_special, parse_special=True, max_tokens=limit, param="messages")
            if isinstance(p, str) else list(p) for p in prompts]


def _check_room(engine: AsyncEngine, num_choices: int) -> None:
    if not engine.has_room_for(num_choices):
        raise queue_full()


def queue_full() -> ApiError:
    """429 for generation and embeddings alike: they share the engine's in-flight bound."""
    return ApiError(429, "The server is at capacity: every slot is busy and the wait queue is full. "
                    "Retry shortly.", type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})


async def merged(streams: list[RequestStream]) -> AsyncIterator[tuple[int, TokenDelta]]:
    """Deltas of several streams as (choice index, delta), as they arrive."""
    if len(streams) == 1:
        async for delta in streams[0]:
            yield 0, delta
        return
    queue: asyncio.Queue[tuple[int, TokenDelta]] = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        async for delta in stream:
            queue.put_nowait((index, delta))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, delta = await queue.get()
            remaining -= delta.finish_reason is not None
            yield index, delta
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def close_all(streams: list[RequestStream]) -> None:
    """Aborts whatever has not finished (client gone, error); safe to call twice."""
    for stream in streams:
        await stream.aclose()


def observe(metrics: ServerMetrics, endpoint: str, started_s: float, choices: list[Choice]) -> None:
    """Records one finished API request's latencies."""
    for choice in choices:
        if choice.first_token_s is not None:
            metrics.ttft_s.observe(choice.first_token_s - started_s)
        for gap in choice.itl_s:
            metrics.itl_s.observe(gap)
    metrics.e2e_s.observe(time.monotonic() - started_s)
    metrics.requests.labels(endpoint, _outcome(choices)).inc()


def _outcome(choices: list[Choice]) -> str:
    reasons = {c.finish_reason for c in choices}
    if FinishReason.ERROR in reasons:
        return "error"
    if None in reasons or FinishReason.ABORT in reasons:
        return "aborted"  # client gone, or server shutting down
    return "ok"
