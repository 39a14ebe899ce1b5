"""OpenAI's Responses API: POST /v1/responses (plain and streamed), GET and DELETE
/v1/responses/{id}, POST /v1/responses/input_tokens. An adapter over the one chat path (chat_path.open_chat): the body is mapped
to a chat body (responses_input), the call's events to Response objects and stream events
(responses_output); stored answers (responses_store) let a follow-up continue by
previous_response_id."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from localllm.server.chat_path import ChatCall, Failed, Finished, open_chat, render_chat
from localllm.server.errors import ApiError, bad_request
from localllm.server.responses_input import ResponsesRequest, parse_request, with_history
from localllm.server.responses_output import (
    StreamTranslator, new_id, output_items, response_object, status_of,
)
from localllm.server.request_log import MODEL_NAME, PROMPT_TOKENS, PROTOCOL
from localllm.server.responses_store import RESPONSE_STORE_KEY, ConversationTooLong, StoredResponse, setup_store
from localllm.server.schemas import read_json
from localllm.server.sse import named_event_stream
from localllm.server.state import CONFIG_KEY
from localllm.server.tenants import owner

PROTOCOL_NAME = "openai.responses"
Keep = Callable[[dict], Awaitable[None]]
"""Stores a finished Response (when the request asked for it)."""


def setup(app: web.Application) -> None:
    setup_store(app, app[CONFIG_KEY])
    app.router.add_post("/v1/responses", create_response)
    app.router.add_post("/v1/responses/input_tokens", count_input_tokens)
    app.router.add_get("/v1/responses/{response_id}", retrieve_response)
    app.router.add_delete("/v1/responses/{response_id}", delete_response)


async def create_response(request: web.Request) -> web.StreamResponse:
    request[PROTOCOL] = PROTOCOL_NAME  # also on the log line of a request refused before the path
    parsed = parse_request(await read_json(request))
    store, tenant = request.app[RESPONSE_STORE_KEY], owner(request)
    history = await _history(request, parsed)
    chat_body = with_history(parsed, history)

    async def keep(response: dict) -> None:
        """Before the client sees the end, so a follow-up it sends at once finds it."""
        if parsed.store and response["status"] != "failed":
            turn = StoredResponse(response, parsed.items + response["output"], parsed.previous_response_id)
            await asyncio.to_thread(store.put, tenant, turn)

    response_id = new_id("resp")
    async with open_chat(request, chat_body, protocol=PROTOCOL_NAME) as call:
        if parsed.stream:
            return await _stream(request, call, parsed, response_id, keep)
        result = (await call.collect())[0]
        finish = result.finish_reason or "length"  # None: the client left mid-answer; nobody reads this
        response = response_object(response_id, call.created, call.model, parsed.echo, status=status_of(finish),
                                   output=output_items(result), usage=call.usage())
        if result.finish_reason is not None:
            await keep(response)
        return web.json_response(response, headers=call.headers)


async def count_input_tokens(request: web.Request) -> web.Response:
    """POST /v1/responses/input_tokens: the prompt's size, rendered as a create would render it."""
    request[PROTOCOL] = PROTOCOL_NAME
    parsed = parse_request(await read_json(request))
    rendered = await render_chat(request, with_history(parsed, await _history(request, parsed)))
    request[MODEL_NAME] = rendered.model
    request[PROMPT_TOKENS] = len(rendered.token_ids)
    return web.json_response({"object": "response.input_tokens", "input_tokens": len(rendered.token_ids)})


async def _history(request: web.Request, parsed: ResponsesRequest) -> list[dict]:
    """The stored conversation previous_response_id continues (empty without one), rebuilt from its
    chain; 404 when the caller's key has no such response or lost one before it."""
    if parsed.previous_response_id is None:
        return []
    store = request.app[RESPONSE_STORE_KEY]
    try:
        conversation = await asyncio.to_thread(store.conversation, owner(request), parsed.previous_response_id)
    except ConversationTooLong as exc:
        raise bad_request(f"Cannot continue response {parsed.previous_response_id[:200]!r}: {exc}; start a new "
                          "conversation with the items as input.", "previous_response_id") from None
    if conversation is None:
        raise ApiError(404, f"Previous response with id {parsed.previous_response_id[:200]!r} not found (it, or a "
                       "response before it in the conversation, is unknown, expired, deleted, evicted, stored with "
                       "store: false, too large to store, or another key's).",
                       param="previous_response_id", code="previous_response_not_found")
    return conversation


async def _stream(request: web.Request, call: ChatCall, parsed: ResponsesRequest, response_id: str,
                  keep: Keep) -> web.StreamResponse:
    translator = StreamTranslator(response_id, call.created, call.model, parsed.echo)
    async with named_event_stream(request, call.headers) as sse:
        await sse.send_named(_named(translator.started()))
        async for _, event in call.events():
            if isinstance(event, Finished):
                events = translator.finished(event.finish_reason, call.usage())
                await keep(translator.response)  # type: ignore[arg-type]
            elif isinstance(event, Failed):
                events = translator.failed(event.message)
            else:
                events = translator.feed(event)
            await sse.send_named(_named(events))
    return sse.response


def _named(events: list[dict]) -> list[tuple[str, dict]]:
    """Each Responses stream event goes under its type's name."""
    return [(event["type"], event) for event in events]


async def retrieve_response(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    stored = await asyncio.to_thread(request.app[RESPONSE_STORE_KEY].get, owner(request), response_id)
    if stored is None:
        raise _not_found(response_id)
    return web.json_response(stored.response)


async def delete_response(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    if not await asyncio.to_thread(request.app[RESPONSE_STORE_KEY].delete, owner(request), response_id):
        raise _not_found(response_id)
    return web.json_response({"id": response_id, "object": "response.deleted", "deleted": True})


def _not_found(response_id: str) -> ApiError:
    return ApiError(404, f"Response with id {response_id[:200]!r} not found.", code="response_not_found")
