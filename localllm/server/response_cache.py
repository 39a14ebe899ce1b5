"""Glue between the generation routes and the on-disk response cache."""
from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from aiohttp import web

from localllm.cache.response_cache import Recorded, ResponseCache, request_key
from localllm.models.manager import LoadedModel
from localllm.server.errors import bad_request
from localllm.server.schemas import GenerationRequest
from localllm.types import FinishReason, TokenDelta

RESPONSE_CACHE_KEY = web.AppKey("response_cache", ResponseCache)
CACHE_HEADER = "X-LocalLLM-Cache"
"""Request: `on` (use it, also for sampled requests) or `off`; response: hit, miss or bypass."""


def wants_cache(request: web.Request, body: dict, gen: GenerationRequest) -> bool:
    """Deterministic requests (temperature 0 or a seed) use the cache unless they opt out;
    sampled ones only when they opt in. Body field `cache` or the header decides."""
    choice = body.get("cache")
    if choice is not None and not isinstance(choice, bool):
        raise bad_request("cache must be true or false", "cache")
    header = request.headers.get(CACHE_HEADER, "").lower()
    if header in ("on", "off"):
        choice = header == "on"
    if choice is not None:
        return choice
    return gen.params.is_greedy or gen.params.seed is not None


def key_for(model: LoadedModel, kind: str, gen: GenerationRequest, add_special: bool, namespace: str = "") -> str:
    """The grammar counts by its sha256 digest: hashing its text (up to 1 MiB) again per request
    would cost time, and dumping it into the key material was the old way to burn memory.
    `namespace` (server/tenants.py) keeps one key's answers from another key."""
    grammar = gen.params.grammar
    params = dataclasses.asdict(dataclasses.replace(gen.params, grammar=None))
    params["grammar"] = grammar.digest if grammar is not None else None
    extra = {"echo": gen.echo, "add_special": add_special, "template": model.chat_template}
    if namespace:
        extra["namespace"] = namespace
    return request_key(model.identity, kind, gen.prompts, gen.n, params, extra)


async def replay(recorded: Recorded) -> AsyncIterator[tuple[int, TokenDelta]]:
    for index, delta in recorded:
        yield index, delta


async def recording(source: AsyncIterator[tuple[int, TokenDelta]], sink: Recorded,
                    ) -> AsyncIterator[tuple[int, TokenDelta]]:
    async for index, delta in source:
        sink.append((index, delta))
        yield index, delta


def is_complete(recorded: Recorded, num_choices: int) -> bool:
    """Only whole answers are stored: every choice ended by stop or length."""
    ends = [d.finish_reason for _, d in recorded if d.finish_reason is not None]
    return len(ends) == num_choices and all(r in (FinishReason.STOP, FinishReason.LENGTH) for r in ends)
