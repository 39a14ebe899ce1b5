"""/v1/chat/completions, /v1/completions and /v1/models in OpenAI's wire format."""
from __future__ import annotations

import asyncio
import base64
import functools

from aiohttp import web

from localllm.models.catalogue import local_model_names
from localllm.models.manager import LoadedModel
from localllm.server.auth import USAGE_TOKENS, reserve_embedding_tokens
from localllm.server.chat_path import ChatCall, Failed, Logprobs, Usage, open_chat, open_completion
from localllm.server.errors import ApiError, bad_request
from localllm.server.generation import queue_full
from localllm.server.openai_formats import ChatFormat, CompletionFormat, Format
from localllm.server.request_log import MODEL_NAME, PROMPT_TOKENS
from localllm.server.schemas import embedding_inputs, keep_alive, read_json
from localllm.server.sse import SseWriter, started_stream
from localllm.server.state import CONFIG_KEY, MODEL_KEY, require_model
from localllm.types import InvalidParam, QueueFull, TokenLogprob


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/embeddings", embeddings)


MAX_EMBEDDING_INPUTS = 256
MAX_EMBEDDING_TOKENS_PER_REQUEST = 32_768
"""All inputs of one /v1/embeddings call together (each is also capped by the model's context):
without it one call could carry 256 x 2,048 tokens, ~0.5 M tokens of work. Past it: 400 `input`,
counted after tokenising and before any embedding work."""


async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request)
    model = await require_model(request, body.get("model"))
    inputs = embedding_inputs(body.get("input"))
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise bad_request("encoding_format must be float or base64", "encoding_format")
    if body.get("dimensions") is not None:
        raise bad_request("dimensions is not supported: this model has a fixed embedding size", "dimensions")
    vectors, num_tokens = await embed_inputs(request, model, inputs, keep_alive(body))
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if encoding == "base64" else v.tolist()}
            for i, v in enumerate(vectors)]
    return web.json_response({"object": "list", "data": data, "model": model.name,
                              "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens}})


async def embed_inputs(request: web.Request, model: LoadedModel, inputs: list[str | list[int]],
                       keep_alive_s: float | None) -> tuple[list, int]:
    """The one embedding path of every protocol: bounds, lease, per-key token limits, the engine's
    pooled and normalised vectors, and what the request log and usage read. Returns (vectors,
    number of input tokens)."""
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise bad_request(f"at most {MAX_EMBEDDING_INPUTS} inputs per request", "input")
    try:
        with request.app[MODEL_KEY].lease(model, keep_alive_s):
            vectors, num_tokens = await model.engine.embed(
                inputs, max_total_tokens=MAX_EMBEDDING_TOKENS_PER_REQUEST,
                on_tokens=functools.partial(reserve_embedding_tokens, request))  # tokens per minute
    except InvalidParam as exc:
        raise bad_request(str(exc), exc.param) from None
    except QueueFull:
        raise queue_full() from None
    request[USAGE_TOKENS] = request[PROMPT_TOKENS] = num_tokens
    request[MODEL_NAME] = model.name
    return vectors, num_tokens


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": await model_entries(request)})


async def model_entries(request: web.Request) -> list[dict]:
    """Served models with their state (loaded / loading / failed), then local ones not loaded:
    /v1/models' list, and what GET /v1/models/{id} looks an id up in."""
    manager = request.app[MODEL_KEY]
    data, names = [], set()
    for served in manager.models:
        loaded = served.loaded
        name = loaded.name if loaded else served.ref
        names.add(name)
        data.append({"id": name, "object": "model", "created": loaded.created if loaded else 0,
                     "owned_by": "localllm", "status": served.status, "load_progress": round(served.progress, 3)})
    for name in await asyncio.to_thread(local_model_names, request.app[CONFIG_KEY]):
        if name not in names:
            data.append({"id": name, "object": "model", "created": 0, "owned_by": "localllm", "status": "available"})
    return data


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    async with open_chat(request, body, protocol="openai.chat") as call:
        fmt = ChatFormat(call, legacy_functions=body.get("functions") is not None)
        return await (_stream(request, call, fmt) if call.stream else _respond(call, fmt))


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    async with open_completion(request, body, protocol="openai.completions") as call:
        fmt = CompletionFormat(call)
        return await (_stream(request, call, fmt) if call.stream else _respond(call, fmt))


async def _respond(call: ChatCall, fmt: Format) -> web.Response:
    results = await call.collect()
    return web.json_response({
        **_meta(call), "object": fmt.object_name,
        "choices": [fmt.full_choice(r) for r in results],
        "usage": _usage(call.usage()),
    }, headers=call.headers)


async def _stream(request: web.Request, call: ChatCall, fmt: Format) -> web.StreamResponse:
    chunk_meta = {**_meta(call), "object": fmt.chunk_object_name}
    extra = {"usage": None} if call.include_usage else {}
    pending: dict[int, list[TokenLogprob]] = {}  # logprobs waiting for the chunk their text goes in
    async with started_stream(request, SseWriter(request, call.headers)) as sse:
        for index in range(call.num_choices):
            first = fmt.first_chunk_choice(index)
            if first is not None:
                await sse.send({**chunk_meta, "choices": [first], **extra})
        async for index, event in call.events():
            if isinstance(event, Logprobs):
                pending.setdefault(index, []).extend(event.entries)
            elif isinstance(event, Failed):
                await sse.send(ApiError(event.status, event.message, type="server_error").body())
            else:
                choice = fmt.delta_choice(index, event, pending.pop(index, None))
                if choice is not None:
                    await sse.send({**chunk_meta, "choices": [choice], **extra})
        if call.include_usage:
            await sse.send({**chunk_meta, "choices": [], "usage": _usage(call.usage())})
    return sse.response


def _meta(call: ChatCall) -> dict:
    return {"id": call.id, "created": call.created, "model": call.model}


def _usage(usage: Usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens, "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}
