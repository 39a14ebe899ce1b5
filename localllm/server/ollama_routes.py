"""Ollama's API under /api/: chat, generate, embed, embeddings and version here; the model routes
(tags, show, ps, pull, delete) in ollama_models.py. An adapter over the one request path
(server/chat_path.py): bodies are mapped by ollama_wire.py, answers stream as NDJSON by default."""
from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import numpy as np
from aiohttp import web

from localllm.chat.output import tool_calls as fold_calls
from localllm.chat.types import ReasoningDelta, TextDelta, ToolCall, ToolCallArguments, ToolCallStarted
from localllm.server import ollama_models
from localllm.server.chat_path import ChatCall, ChoiceResult, Failed, Finished, open_chat, open_completion
from localllm.server.errors import CLIENT_CLOSED, bad_request
from localllm.server.ndjson import NdjsonWriter
from localllm.server.ollama_wire import (
    API_VERSION, Timings, chat_body, done_reason, generate_body, model_name, parse_options, rfc3339,
    raw_body, text_field, tool_calls,
)
from localllm.server.openai_routes import embed_inputs
from localllm.server.request_log import PROTOCOL as PROTOCOL_KEY
from localllm.server.schemas import flag, keep_alive, read_json
from localllm.server.state import MODEL_KEY, require_model

PROTOCOL = "ollama"
Opener = Callable[..., AbstractAsyncContextManager[ChatCall]]


def setup(app: web.Application) -> None:
    app.router.add_post("/api/chat", logged(chat))
    app.router.add_post("/api/generate", logged(generate))
    app.router.add_post("/api/embed", logged(embed))
    app.router.add_post("/api/embeddings", logged(embeddings))
    app.router.add_get("/api/version", logged(version))
    ollama_models.setup(app, logged)


def logged(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    """The handler, with the request log line naming the protocol, also for requests refused
    before the chat path (which names it for those it serves)."""

    @functools.wraps(handler)
    async def named(request: web.Request) -> web.StreamResponse:
        request[PROTOCOL_KEY] = PROTOCOL
        return await handler(request)

    return named


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": API_VERSION})


class _Shape:
    """Where the text goes: /api/chat's `message`, or /api/generate's top-level `response`."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat = chat
        self.model = model

    def reply(self, content: str, thinking: str | None = None, calls: Sequence[ToolCall] = (), **extra: Any) -> dict:
        head = {"model": self.model, "created_at": rfc3339()}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = tool_calls(list(calls))
            return {**head, "message": message, **extra}
        return {**head, "response": content, **({"thinking": thinking} if thinking else {}), **extra}


async def chat(request: web.Request) -> web.StreamResponse:
    """POST /api/chat. Empty `messages` loads the model (done_reason "load"), as Ollama does."""
    started_s = time.monotonic()
    body = await read_json(request)
    mapped = chat_body(body)
    shape = _Shape(True, mapped["model"])
    if not mapped["messages"]:
        return await _load_only(request, body, shape)
    return await _answer(request, open_chat, mapped, shape, started_s)


async def generate(request: web.Request) -> web.StreamResponse:
    """POST /api/generate: the prompt as one user turn under the model's chat template (with
    `system` before it), or with `raw: true` as written. An empty prompt loads the model."""
    started_s = time.monotonic()
    body = await read_json(request)
    raw = flag(body, "raw", False)
    mapped = raw_body(body) if raw else generate_body(body)
    shape = _Shape(False, mapped["model"])
    if not body.get("prompt"):
        return await _load_only(request, body, shape)
    return await _answer(request, open_completion if raw else open_chat, mapped, shape, started_s)


async def _load_only(request: web.Request, body: dict, shape: _Shape) -> web.Response:
    """Ollama's preload (no messages / no prompt), or unload with keep_alive 0. An unload is the
    keep-alive rule's, as for any request's keep_alive: after the server's floor
    (MIN_REQUEST_KEEP_ALIVE_S), never the default model, never one serving requests."""
    seconds = keep_alive(body)
    manager = request.app[MODEL_KEY]
    if seconds == 0:
        served = manager.find(shape.model)
        if served is not None and served.loaded is not None:
            with manager.lease(served.loaded, 0.0):
                pass
        return web.json_response(shape.reply("", done=True, done_reason="unload"))
    model = await require_model(request, shape.model)
    with manager.lease(model, seconds):  # applies the request's keep_alive
        pass
    return web.json_response(shape.reply("", done=True, done_reason="load"))


async def _answer(request: web.Request, opener: Opener, mapped: dict, shape: _Shape,
                  started_s: float) -> web.StreamResponse:
    # num_predict past the slot's room stops at the context's end, as Ollama does (not a 400)
    async with opener(request, mapped, protocol=PROTOCOL, max_tokens_is_cap=True) as call:
        shape.model = call.model
        if mapped["stream"]:
            return await _stream(request, call, shape, started_s)
        result = (await call.collect())[0]
        return web.json_response(_final(call, shape, started_s, result), headers=call.headers)


def _final(call: ChatCall, shape: _Shape, started_s: float, result: ChoiceResult) -> dict:
    return shape.reply(result.content, result.reasoning, result.tool_calls, done=True,
                       done_reason=done_reason(result.finish_reason), **_timings(call, started_s).fields())


def _timings(call: ChatCall, started_s: float) -> Timings:
    stats = call.stats()[0]
    return Timings(total_s=time.monotonic() - started_s, load_s=call.load_s, prompt_s=stats.prompt_s or 0.0,
                   generation_s=stats.generation_s, num_prompt_tokens=stats.num_prompt_tokens,
                   num_generated_tokens=stats.num_generated_tokens)


async def _stream(request: web.Request, call: ChatCall, shape: _Shape, started_s: float) -> web.StreamResponse:
    """One NDJSON line per text or thinking piece; tool calls whole, in one line once the answer is
    complete (Ollama sends calls whole, never as argument fragments); then the closing line with
    done, done_reason and the durations. A failure mid-answer is an `{"error": ...}` line."""
    writer = NdjsonWriter(request, call.headers)
    await writer.start()
    call_events: list[ToolCallStarted | ToolCallArguments] = []  # folded into whole calls at the end
    try:
        async for index, event in _first_choice(call):
            if isinstance(event, TextDelta) and event.text:
                await writer.send(shape.reply(event.text, done=False))
            elif isinstance(event, ReasoningDelta) and event.text:
                await writer.send(shape.reply("", event.text, done=False))
            elif isinstance(event, (ToolCallStarted, ToolCallArguments)):
                call_events.append(event)
            elif isinstance(event, Finished):
                if call_events:
                    await writer.send(shape.reply("", calls=fold_calls(call_events), done=False))
                await writer.send(shape.reply("", done=True, done_reason=done_reason(event.finish_reason),
                                              **_timings(call, started_s).fields()))
            elif isinstance(event, Failed):
                await writer.send({"error": event.message})
        await writer.finish()
    except ConnectionError:  # the client went away; the path's exit aborts the rest
        request[CLIENT_CLOSED] = True
    return writer.response


async def _first_choice(call: ChatCall) -> AsyncIterator[tuple[int, Any]]:
    async for index, event in call.events():
        if index == 0:  # Ollama has no `n`: one choice
            yield index, event


async def embed(request: web.Request) -> web.Response:
    """POST /api/embed {"model", "input": text | [texts], "dimensions"?}: normalised vectors, through
    the same embedding path as /v1/embeddings. Inputs past the model's limit are a 400 (truncation
    is not offered)."""
    started_s = time.monotonic()
    body = await read_json(request)
    name = model_name(body)
    texts = _texts(body.get("input"))
    dimensions = _dimensions(body.get("dimensions"))
    flag(body, "truncate", True)  # checked; inputs past the limit are a 400 either way
    parse_options(body.get("options"))  # type-checked as for generation; none applies to embeddings
    keep_alive_s = keep_alive(body)
    model = await require_model(request, name)
    load_s = time.monotonic() - started_s
    vectors, num_tokens = await embed_inputs(request, model, texts, keep_alive_s) if texts else ([], 0)
    return web.json_response({
        "model": model.name, "embeddings": [_cut(v, dimensions) for v in vectors],
        "total_duration": int((time.monotonic() - started_s) * 1e9), "load_duration": int(load_s * 1e9),
        "prompt_eval_count": num_tokens})


async def embeddings(request: web.Request) -> web.Response:
    """POST /api/embeddings {"model", "prompt"}: Ollama's older single-text embedding route."""
    body = await read_json(request)
    name = model_name(body)
    prompt = text_field(body, "prompt")
    parse_options(body.get("options"))
    keep_alive_s = keep_alive(body)
    model = await require_model(request, name)
    if not prompt:
        return web.json_response({"embedding": []})
    vectors, _ = await embed_inputs(request, model, [prompt], keep_alive_s)
    return web.json_response({"embedding": vectors[0].tolist()})


def _texts(value: object) -> list[str]:
    texts = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise bad_request("input must be a string or a list of strings", "input")
    if any(not t for t in texts):
        raise bad_request("input must not contain an empty string", "input")
    return texts


def _dimensions(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request("dimensions must be a positive integer", "dimensions")
    return value


def _cut(vector: np.ndarray, dimensions: int | None) -> list[float]:
    """The first `dimensions` values, normalised again (Ollama's Matryoshka truncation)."""
    if dimensions is None or dimensions >= len(vector):
        return vector.tolist()
    head = vector[:dimensions]
    norm = float(np.linalg.norm(head))
    return (head / norm if norm else head).tolist()
