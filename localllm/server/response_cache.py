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
    """A whole answer for `num_choices` choices: every index in range, and every choice ended
    once, by stop or length. Checked before storing, and on a hit (the cache directory is untrusted)."""
    ends = {i: d.finish_reason for i, d in recorded if d.finish_reason is not None}
    return (all(0 <= i < num_choices for i, _ in recorded) and len(ends) == num_choices
            and sum(d.finish_reason is not None for _, d in recorded) == num_choices
            and all(r in (FinishReason.STOP, FinishReason.LENGTH) for r in ends.values()))


def lookup(cache: ResponseCache, key: str, num_choices: int, num_vocab: int) -> Recorded | None:
    """Worker thread: the answer stored under `key` if it `fits` the request, else None (a miss,
    stored anew). Checking it walks every recorded token: not on the event loop."""
    recorded = cache.get(key)
    return recorded if recorded is not None and fits(recorded, num_choices, num_vocab) else None


def fits(recorded: Recorded, num_choices: int, num_vocab: int) -> bool:
    """A hit is replayed only if this request could have recorded it: complete for its choices,
    and every token id in the vocabulary (logprobs render them through llama.cpp)."""
    token_ids = [t for _, d in recorded for t in d.token_ids]
    token_ids += [t for _, d in recorded for lp in d.logprobs or [] for t in (lp.token_id, *(a for a, _ in lp.top))]
    return is_complete(recorded, num_choices) and all(0 <= t < num_vocab for t in token_ids)
