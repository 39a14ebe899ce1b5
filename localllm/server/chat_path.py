"""The one request path every protocol adapter uses (OpenAI chat and completions, Responses,
Anthropic Messages, Ollama): model lookup and lease, template rendering and tokenising (in a
worker), the response cache, queueing, output parsing, metrics, per-key usage and the request
log line. An adapter maps its wire body to an OpenAI chat-completions body, opens a call here,
and maps the call's events (or collected results) back to its wire format; nothing else.

The response cache sits below parsing: it records the engine's TokenDeltas, and a hit replays
them through the same parsing, so one entry serves every protocol and every output option.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from localllm.cache.response_cache import Recorded
from localllm.chat.families import Family
from localllm.chat.messages import parse_tools, template_kwargs
from localllm.chat.output import OutputParser
from localllm.chat.template import MAX_CHAT_MESSAGES, RenderedPrompt, compiled_template
from localllm.chat.types import ToolChoiceMode, ToolSpec
from localllm.models.manager import LoadedModel
from localllm.server.auth import RATE_HEADERS, USAGE_TOKENS, reserve_tokens
from localllm.server.chat_call import (
    ChatCall,
    ChatEvent,
    ChoiceResult,
    ChoiceStats,
    Failed,
    Finished,
    Logprobs,
    Usage,
)
from localllm.server.errors import bad_request
from localllm.server.generation import Choice, close_all, merged, observe, start_choices
from localllm.server.metrics import METRICS_KEY
from localllm.server.request_log import (
    COMPLETION_TOKENS,
    MODEL_NAME,
    PROMPT_TOKENS,
    PROTOCOL,
    RECEIVED_S,
    TTFT_S,
)
from localllm.server.response_cache import (
    CACHE_HEADER,
    RESPONSE_CACHE_KEY,
    is_complete,
    key_for,
    lookup,
    recording,
    replay,
    wants_cache,
)
from localllm.server.schemas import (
    GenerationRequest,
    completion_prompts,
    generation_request,
    keep_alive,
    response_format_schema,
)
from localllm.server.state import CONFIG_KEY, MODEL_KEY, require_model
from localllm.server.tenants import cache_namespace
from localllm.types import InvalidParam

__all__ = [
    "ChatCall",
    "ChatEvent",
    "ChoiceResult",
    "ChoiceStats",
    "Failed",
    "Finished",
    "Logprobs",
    "RenderedChat",
    "Usage",
    "open_chat",
    "open_completion",
    "render_chat",
]

CHAT_KIND = "chat.completion"
COMPLETION_KIND = "text_completion"
"""What the response-cache key calls the two kinds of request (stable: existing entries keep hitting)."""


@dataclass(frozen=True, slots=True)
class RenderedChat:
    model: str
    text: str
    """The prompt as the template wrote it."""
    token_ids: list[int]
    """What generation would be fed: message contents tokenised without parsing special tokens."""


@asynccontextmanager
async def open_chat(request: web.Request, body: dict, *, protocol: str,
                    max_tokens_is_cap: bool = False) -> AsyncIterator[ChatCall]:
    """A chat request (an OpenAI chat-completions body) queued on its model. Validates and raises
    ApiError before anything is sent; on exit aborts what is left, stores a complete answer in the
    response cache, records metrics, per-key usage and the request log line naming `protocol`.
    `max_tokens_is_cap`: a max_tokens past the slot's room stops there instead of a 400 (Ollama)."""
    request[PROTOCOL] = protocol
    model, load_s = await _model(request, body)
    _check_messages(body, model)
    chat = await asyncio.to_thread(_prepare_chat, model, body, generate=True)
    reasoning = request.app[CONFIG_KEY].server.reasoning_format != "none"
    parsers = [OutputParser(chat.family, parse_tools=chat.parse_tools, parse_reasoning=reasoning,
                            starts_in_reasoning=chat.prompt.starts_in_reasoning, tools=chat.tools)
               for _ in range(chat.gen.n)]
    async with _opened(request, model, body, chat.gen, kind=CHAT_KIND, protocol=protocol, load_s=load_s,
                       parsers=parsers, max_tokens_is_cap=max_tokens_is_cap) as call:
        yield call


@asynccontextmanager
async def open_completion(request: web.Request, body: dict, *, protocol: str,
                          max_tokens_is_cap: bool = False) -> AsyncIterator[ChatCall]:
    """A raw-prompt request (an OpenAI completions body: `prompt` as text or tokens, several
    prompts allowed, special tokens in the text parsed by design); TextDelta events only.
    `max_tokens_is_cap` as for open_chat."""
    request[PROTOCOL] = protocol
    model, load_s = await _model(request, body)
    if body.get("suffix"):
        raise bad_request("suffix (fill-in-the-middle) is not supported by this server", "suffix")
    gen = await _generation_request(body, completion_prompts(body), model, chat=False)
    async with _opened(request, model, body, gen, kind=COMPLETION_KIND, protocol=protocol, load_s=load_s,
                       max_tokens_is_cap=max_tokens_is_cap) as call:
        yield call


async def render_chat(request: web.Request, body: dict) -> RenderedChat:
    """The prompt a chat body renders to, without generating: for /apply-template, token counting
    and showing templates. Same validation and special-token rule as open_chat."""
    model, _ = await _model(request, body)
    _check_messages(body, model)
    with request.app[MODEL_KEY].lease(model):  # held while a worker tokenises: no unload under it
        chat = await asyncio.to_thread(_prepare_chat, model, body, generate=False)
    return RenderedChat(model.name, chat.prompt.text, chat.prompt.token_ids)


async def _model(request: web.Request, body: dict) -> tuple[LoadedModel, float]:
    started_s = time.monotonic()
    model = await require_model(request, body.get("model"))
    return model, time.monotonic() - started_s


def _check_messages(body: dict, model: LoadedModel) -> None:
    """The cheap checks, on the loop, before any work is sent to a worker."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    if len(messages) > MAX_CHAT_MESSAGES:
        raise bad_request(f"messages has {len(messages)} entries; at most {MAX_CHAT_MESSAGES} are accepted", "messages")
    if not model.chat_template:
        raise bad_request(f"model {model.name!r} has no chat template; use /v1/completions", "messages")


@dataclass(frozen=True, slots=True)
class _PreparedChat:
    prompt: RenderedPrompt
    family: Family
    parse_tools: bool
    """Whether the output is parsed for calls: tools offered and tool_choice not none."""
    tools: list[ToolSpec]
    """Their schemas type the values of call formats that write arguments as text (Qwen3-Coder's XML)."""
    gen: GenerationRequest | None
    """The validated request, its grammar built (None when only rendering)."""


def _prepare_chat(model: LoadedModel, body: dict, *, generate: bool) -> _PreparedChat:
    """Worker thread: tools and template kwargs validated, the template compiled (once per model;
    it comes from the model file, of any size), rendered and tokenised (both grow with the
    messages and tools), and the grammar built and compiled. Message contents are tokenised
    without parsing special tokens, so a user cannot write the template's markers."""
    engine = model.engine

    def tokenize(text: str, parse_special: bool) -> list[int]:
        return engine.tokenize(text, add_special=False, parse_special=parse_special,
                               max_tokens=engine.slot_ctx, param="messages")

    try:
        tools, choice, parallel = parse_tools(body)
        kwargs = template_kwargs(body)
        source = model.template_source(tools=bool(tools))  # the GGUF's tool-use variant for requests with tools
        template = compiled_template(source, model.bos_token, model.eos_token, model.template_family)
        prompt = template.prompt(body["messages"], tokenize, max_tokens=engine.slot_ctx, tools=tools,
                                 template_kwargs=kwargs)
        calls = choice.mode is not ToolChoiceMode.NONE
        if not generate:
            return _PreparedChat(prompt, template.family, calls, tools, None)
        # with calls the tool grammar covers response_format too: no JSON grammar is built for it
        gen = generation_request({**body, "response_format": None} if calls else body, [prompt.token_ids],
                                 chat=True, json_grammar=engine.json_grammar)
        if calls:
            # a named function is called once: a grammar that allows more lets a weak model call it
            # again and again until max_tokens, and the cut-off reply then holds no call at all
            parallel = parallel and choice.mode is not ToolChoiceMode.NAMED
            grammar = engine.tool_grammar(template.family, tools, choice, parallel, _response_schema(body),
                                          starts_in_reasoning=prompt.starts_in_reasoning)
            gen = dataclasses.replace(gen, params=dataclasses.replace(gen.params, grammar=grammar))
    except InvalidParam as exc:
        raise bad_request(str(exc), exc.param) from None
    return _PreparedChat(prompt, template.family, calls, tools, gen)


def _response_schema(body: dict) -> dict | None:
    """The JSON schema a response_format asks the content to follow (json_object: any object)."""
    wants_json, schema = response_format_schema(body.get("response_format"))
    if not wants_json:
        return None
    return {"type": "object"} if schema is None else schema


async def _generation_request(body: dict, prompts: list[str | list[int]], model: LoadedModel, *,
                              chat: bool) -> GenerationRequest:
    """The validated request. A response_format is bounded, turned into a grammar and compiled
    once, in a worker thread: never on the event loop, never again on the engine thread."""
    build = functools.partial(generation_request, body, prompts, chat=chat, json_grammar=model.engine.json_grammar)
    return await asyncio.to_thread(build) if body.get("response_format") is not None else build()


@asynccontextmanager
async def _opened(request: web.Request, model: LoadedModel, body: dict, gen: GenerationRequest, *, kind: str,
                  protocol: str, load_s: float, parsers: list[OutputParser] | None = None,
                  max_tokens_is_cap: bool = False) -> AsyncIterator[ChatCall]:
    """Leases the model, answers from the response cache or queues every choice, and on exit
    does the bookkeeping every protocol shares."""
    add_special = kind == COMPLETION_KIND  # chat prompts arrive tokenised, the template wrote BOS
    with request.app[MODEL_KEY].lease(model, keep_alive(body)):
        started_s = time.monotonic()
        cache = request.app[RESPONSE_CACHE_KEY]
        namespace = cache_namespace(request, body)
        key = None
        if cache.is_active and wants_cache(request, body, gen):  # hashes every prompt: a large body is CPU work
            key = await asyncio.to_thread(key_for, model, kind, gen, add_special, namespace)
        num_choices = len(gen.prompts) * gen.n
        recorded = await asyncio.to_thread(lookup, cache, key, num_choices, model.engine.num_vocab) if key else None
        sink: Recorded = []
        reserve = functools.partial(_reserve_tokens, request, model, gen)
        streams = [] if recorded is not None else await start_choices(
            model.engine, gen, add_special, namespace, reserve, max_tokens_is_cap=max_tokens_is_cap)
        merged_deltas = replay(recorded) if recorded is not None else merged(streams)
        # recorded only when it will be stored: a bypass keeps no copy of every delta
        source = recording(merged_deltas, sink) if key and recorded is None else merged_deltas
        headers = {**request.get(RATE_HEADERS, {}),
                   CACHE_HEADER: "bypass" if key is None else "hit" if recorded is not None else "miss"}
        choices = [Choice(i) for i in range(num_choices)]
        call = ChatCall(request, model, gen, source, choices, headers, kind=kind, started_s=started_s, load_s=load_s,
                        parsers=parsers)
        try:
            yield call
        finally:
            await call.aclose()
            await merged_deltas.aclose()
            await close_all(streams)
            if key and recorded is None and is_complete(sink, num_choices):
                await asyncio.to_thread(cache.put, key, sink, model.name)
            observe(request.app[METRICS_KEY], protocol, started_s, choices)
            _note_for_log(request, model, call)


def _reserve_tokens(request: web.Request, model: LoadedModel, gen: GenerationRequest,
                    prompt_ids: list[list[int]]) -> None:
    """Per-minute token limits: called by start_choices with the prompts already tokenised
    (in a worker: a long prompt is never tokenised on the event loop)."""
    reserve_tokens(request, [len(ids) for ids in prompt_ids], gen.n, gen.params.max_tokens, model.engine.slot_ctx)


def _note_for_log(request: web.Request, model: LoadedModel, call: ChatCall) -> None:
    """What the per-request log line and per-key usage read off the request."""
    counts = call.usage()
    request[USAGE_TOKENS] = counts.total_tokens
    request[PROMPT_TOKENS] = counts.prompt_tokens
    request[COMPLETION_TOKENS] = counts.completion_tokens
    request[MODEL_NAME] = model.name
    first_s = call.first_token_s()
    if first_s is not None and RECEIVED_S in request:
        request[TTFT_S] = first_s - request[RECEIVED_S]
