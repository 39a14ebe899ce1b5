"""/v1/chat/completions, /v1/completions and /v1/models in OpenAI's wire format."""
from __future__ import annotations

import asyncio
import base64
import functools
import time
import uuid
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from localllm.cache.response_cache import Recorded
from localllm.chat.template import MAX_CHAT_MESSAGES, compiled_template
from localllm.models.catalogue import local_model_names
from localllm.models.manager import LoadedModel
from localllm.server.auth import RATE_HEADERS, USAGE_TOKENS, reserve_embedding_tokens, reserve_tokens
from localllm.server.errors import CLIENT_CLOSED, ApiError, bad_request, client_gone
from localllm.server.generation import Choice, close_all, merged, observe, queue_full, start_choices, usage
from localllm.server.metrics import METRICS_KEY
from localllm.server.schemas import (
    GenerationRequest, completion_prompts, embedding_inputs, generation_request, keep_alive, read_json,
)
from localllm.server.request_log import COMPLETION_TOKENS, MODEL_NAME, PROMPT_TOKENS, RECEIVED_S, TTFT_S
from localllm.server.response_cache import (
    CACHE_HEADER, RESPONSE_CACHE_KEY, fits, is_complete, key_for, recording, replay, wants_cache,
)
from localllm.server.sse import SseWriter
from localllm.server.state import CONFIG_KEY, MODEL_KEY, require_model
from localllm.server.tenants import cache_namespace
from localllm.types import FinishReason, InvalidParam, QueueFull, TokenDelta, TokenLogprob


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
    model = await require_model(request, body.get("model"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    if len(messages) > MAX_CHAT_MESSAGES:
        raise bad_request(f"messages has {len(messages)} entries; at most {MAX_CHAT_MESSAGES} are accepted", "messages")
    if not model.chat_template:
        raise bad_request(f"model {model.name!r} has no chat template; use /v1/completions", "messages")
    if body.get("tools") or body.get("functions"):
        raise bad_request("tool and function calling are not supported yet", "tools")
    prompt_ids = await asyncio.to_thread(_chat_prompt_ids, model, messages)
    gen = await _generation_request(body, [prompt_ids], model, chat=True)
    fmt = _ChatFormat(model.engine.token_bytes if gen.params.logprobs is not None else None)
    return await _respond(request, model, body, gen, fmt, add_special=False)


def _chat_prompt_ids(model: LoadedModel, messages: list) -> list[int]:
    """Worker thread: compile the template (once per model; it comes from the model file, of any
    size), render and tokenise (both grow with the messages); message contents are tokenised
    without parsing special tokens, so a user cannot write the template's markers."""
    engine = model.engine

    def tokenize(text: str, parse_special: bool) -> list[int]:
        return engine.tokenize(text, add_special=False, parse_special=parse_special,
                               max_tokens=engine.slot_ctx, param="messages")

    try:
        template = compiled_template(model.chat_template, model.bos_token, model.eos_token)
        return template.prompt_token_ids(messages, tokenize, max_tokens=engine.slot_ctx)
    except InvalidParam as exc:
        raise bad_request(str(exc), exc.param) from None


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    model = await require_model(request, body.get("model"))
    if body.get("suffix"):
        raise bad_request("suffix (fill-in-the-middle) is not supported by this server", "suffix")
    gen = await _generation_request(body, completion_prompts(body), model, chat=False)
    echo = gen.echo
    engine = model.engine

    def prompt_text(index: int) -> str:
        prompt = gen.prompts[index // gen.n]
        return prompt if isinstance(prompt, str) else engine.detokenize(prompt)

    token_bytes = engine.token_bytes if gen.params.logprobs is not None else None
    return await _respond(request, model, body, gen, _CompletionFormat(prompt_text if echo else None, token_bytes),
                          add_special=True)


async def _generation_request(body: dict, prompts: list[str | list[int]], model: LoadedModel, *,
                              chat: bool) -> GenerationRequest:
    """The validated request. A response_format is bounded, turned into a grammar and compiled
    once, in a worker thread: never on the event loop, never again on the engine thread."""
    build = functools.partial(generation_request, body, prompts, chat=chat, json_grammar=model.engine.json_grammar)
    return await asyncio.to_thread(build) if body.get("response_format") is not None else build()


async def _respond(request: web.Request, model: LoadedModel, body: dict, gen: GenerationRequest, fmt: _Format,
                   add_special: bool) -> web.StreamResponse:
    with request.app[MODEL_KEY].lease(model, keep_alive(body)):
        return await _generate(request, model, body, gen, fmt, add_special)


async def _generate(request: web.Request, model: LoadedModel, body: dict, gen: GenerationRequest, fmt: _Format,
                    add_special: bool) -> web.StreamResponse:
    started_s = time.monotonic()
    cache = request.app[RESPONSE_CACHE_KEY]
    namespace = cache_namespace(request, body)
    key = None
    if cache.is_active and wants_cache(request, body, gen):  # hashes every prompt: a large body is CPU work
        key = await asyncio.to_thread(key_for, model, fmt.object_name, gen, add_special, namespace)
    recorded = await asyncio.to_thread(cache.get, key) if key else None
    num_choices = len(gen.prompts) * gen.n
    if recorded is not None and not fits(recorded, num_choices, model.engine.num_vocab):
        recorded = None  # an entry that does not fit the request: a miss, stored anew below
    sink: Recorded = []
    reserve = functools.partial(_reserve_tokens, request, model, gen)
    streams = [] if recorded is not None else await start_choices(model.engine, gen, add_special, namespace, reserve)
    source = replay(recorded) if recorded is not None else recording(merged(streams), sink)
    headers = {**request.get(RATE_HEADERS, {}),
               CACHE_HEADER: "bypass" if key is None else "hit" if recorded is not None else "miss"}
    meta = {"id": fmt.id_prefix + uuid.uuid4().hex, "created": int(time.time()), "model": model.name}
    choices = [Choice(i) for i in range(num_choices)]
    try:
        if gen.stream:
            return await _stream(request, gen, fmt, meta, source, choices, headers)
        async for index, delta in source:
            choices[index].absorb(delta)
            if client_gone(request):
                request[CLIENT_CLOSED] = True
                break  # client gone: the finally below aborts what is left
        failed = [c for c in choices if c.finish_reason in (FinishReason.ERROR, FinishReason.ABORT) or c.error]
        if failed:
            raise ApiError(500 if failed[0].finish_reason is FinishReason.ERROR else 503,
                           failed[0].error or "The request was cancelled by the server.", type="server_error")
        return web.json_response({
            **meta, "object": fmt.object_name,
            "choices": [fmt.full_choice(c) for c in choices],
            "usage": usage(choices, gen.n),
        }, headers=headers)
    finally:
        await close_all(streams)
        if key and recorded is None and is_complete(sink, num_choices):
            await asyncio.to_thread(cache.put, key, sink, model.name)
        observe(request.app[METRICS_KEY], fmt.object_name, started_s, choices)
        _note_for_log(request, model, choices, gen.n)


async def _stream(request: web.Request, gen: GenerationRequest, fmt: _Format, meta: dict,
                  source: AsyncIterator[tuple[int, TokenDelta]], choices: list[Choice],
                  headers: dict[str, str]) -> web.StreamResponse:
    sse = SseWriter(request, headers)
    await sse.start()
    chunk_meta = {**meta, "object": fmt.chunk_object_name}
    extra = {"usage": None} if gen.include_usage else {}
    try:
        for choice in choices:
            first = fmt.first_chunk_choice(choice.index)
            if first is not None:
                await sse.send({**chunk_meta, "choices": [first], **extra})
        async for index, delta in source:
            choice = choices[index]
            choice.absorb(delta)
            if delta.finish_reason in (FinishReason.ERROR, FinishReason.ABORT):
                message = delta.error or "The request was cancelled by the server."
                await sse.send(ApiError(500, message, type="server_error").body())
                continue
            if delta.text or delta.finish_reason is not None:
                await sse.send({**chunk_meta, "choices": [fmt.delta_choice(index, delta)], **extra})
        if gen.include_usage:
            await sse.send({**chunk_meta, "choices": [], "usage": usage(choices, gen.n)})
        await sse.finish()
    except ConnectionError:  # client went away; the caller's finally aborts the rest
        request[CLIENT_CLOSED] = True
    return sse.response


def _reserve_tokens(request: web.Request, model: LoadedModel, gen: GenerationRequest,
                    prompt_ids: list[list[int]]) -> None:
    """Per-minute token limits: called by start_choices with the prompts already tokenised
    (in a worker: a long prompt is never tokenised on the event loop)."""
    reserve_tokens(request, [len(ids) for ids in prompt_ids], gen.n, gen.params.max_tokens, model.engine.slot_ctx)


def _note_for_log(request: web.Request, model: LoadedModel, choices: list[Choice], n: int) -> None:
    """What the per-request log line and per-key usage read off the request."""
    counts = usage(choices, n)
    request[USAGE_TOKENS] = counts["total_tokens"]
    request[PROMPT_TOKENS] = counts["prompt_tokens"]
    request[COMPLETION_TOKENS] = counts["completion_tokens"]
    request[MODEL_NAME] = model.name
    firsts = [c.first_token_s for c in choices if c.first_token_s is not None]
    if firsts and RECEIVED_S in request:
        request[TTFT_S] = min(firsts) - request[RECEIVED_S]


class _Format:
    id_prefix: str
    object_name: str
    chunk_object_name: str

    def full_choice(self, choice: Choice) -> dict: ...
    def first_chunk_choice(self, index: int) -> dict | None: ...
    def delta_choice(self, index: int, delta: TokenDelta) -> dict: ...


def _finish(reason: FinishReason | None) -> str | None:
    return None if reason is None else reason.value


class _ChatFormat(_Format):
    id_prefix, object_name, chunk_object_name = "chatcmpl-", "chat.completion", "chat.completion.chunk"

    def __init__(self, token_bytes: Callable[[int], bytes] | None) -> None:
        self._token_bytes = token_bytes
        """Set when the request asked for logprobs."""

    def full_choice(self, choice: Choice) -> dict:
        return {
            "index": choice.index,
            "message": {"role": "assistant", "content": "".join(choice.text)},
            "logprobs": self._logprobs(choice.logprobs),
            "finish_reason": _finish(choice.finish_reason),
        }

    def _logprobs(self, entries: list[TokenLogprob] | None) -> dict | None:
        if self._token_bytes is None or entries is None:
            return None
        return {"content": [{**self._token(e.token_id, e.logprob),
                             "top_logprobs": [self._token(t, lp) for t, lp in e.top]} for e in entries]}

    def _token(self, token_id: int, logprob: float) -> dict:
        raw = self._token_bytes(token_id)
        return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}

    def first_chunk_choice(self, index: int) -> dict:
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}

    def delta_choice(self, index: int, delta: TokenDelta) -> dict:
        content = {"content": delta.text} if delta.text else {}
        return {"index": index, "delta": content, "logprobs": self._logprobs(delta.logprobs),
                "finish_reason": _finish(delta.finish_reason)}


class _CompletionFormat(_Format):
    id_prefix, object_name, chunk_object_name = "cmpl-", "text_completion", "text_completion"

    def __init__(self, echo: Callable[[int], str] | None, token_bytes: Callable[[int], bytes] | None) -> None:
        self._echo = echo
        self._token_bytes = token_bytes

    def full_choice(self, choice: Choice) -> dict:
        prefix = self._echo(choice.index) if self._echo else ""
        return {"index": choice.index, "text": prefix + "".join(choice.text),
                "logprobs": self._logprobs(choice.logprobs, len(prefix)),
                "finish_reason": _finish(choice.finish_reason)}

    def _logprobs(self, entries: list[TokenLogprob] | None, offset: int = 0) -> dict | None:
        """OpenAI's legacy completions shape: parallel lists."""
        if self._token_bytes is None or entries is None:
            return None
        text = lambda t: self._token_bytes(t).decode("utf-8", "replace")  # noqa: E731
        tokens = [text(e.token_id) for e in entries]
        offsets = []
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{text(t): lp for t, lp in e.top} for e in entries], "text_offset": offsets}

    def first_chunk_choice(self, index: int) -> dict | None:
        if self._echo is None:
            return None
        return {"index": index, "text": self._echo(index), "logprobs": None, "finish_reason": None}

    def delta_choice(self, index: int, delta: TokenDelta) -> dict:
        return {"index": index, "text": delta.text, "logprobs": self._logprobs(delta.logprobs),
                "finish_reason": _finish(delta.finish_reason)}
