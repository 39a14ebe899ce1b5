"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API as an adapter over the
one chat path (server/chat_path.py). The body maps to an OpenAI chat body (anthropic_wire.py), the
answer back to Anthropic's message or stream events (anthropic_events.py); keys, limits, caches,
metrics and the request log are the path's. Errors take Anthropic's shape by path (errors.protocol_of).
"""
from __future__ import annotations

from aiohttp import web

from localllm.server.anthropic_events import MessageEvents, error_event, message_body, message_id
from localllm.server.anthropic_wire import chat_body
from localllm.server.chat_path import ChatCall, Failed, Finished, open_chat, render_chat
from localllm.server.request_log import PROTOCOL, REQUEST_ID
from localllm.server.schemas import read_json
from localllm.server.sse import named_event_stream

PROTOCOL_NAME = "anthropic"


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)


async def messages(request: web.Request) -> web.StreamResponse:
    request[PROTOCOL] = PROTOCOL_NAME  # also on the log line of a request refused before the path
    chat = chat_body(await read_json(request))
    async with open_chat(request, chat, protocol=PROTOCOL_NAME) as call:
        msg_id = message_id()
        headers = {**call.headers, **_request_id(request)}
        if chat.get("stream"):
            return await _stream(request, call, msg_id, headers)
        [result] = await call.collect()
        return web.json_response(message_body(msg_id, call.model, result, call.usage()), headers=headers)


async def count_tokens(request: web.Request) -> web.Response:
    """The prompt's tokens as the template renders it (system, messages and tools), nothing generated."""
    request[PROTOCOL] = PROTOCOL_NAME
    rendered = await render_chat(request, chat_body(await read_json(request), count_only=True))
    return web.json_response({"input_tokens": len(rendered.token_ids)})


async def _stream(request: web.Request, call: ChatCall, msg_id: str, headers: dict[str, str]) -> web.StreamResponse:
    mapped = MessageEvents(msg_id, call.model)
    started = False
    async with named_event_stream(request, headers) as sse:
        async for _, event in call.events():
            if isinstance(event, Failed):
                await sse.send_named([error_event(event.message, event.status)])
                continue
            if not started:  # with the first event: the prompt's token counts (and cache reuse) are known
                started = True
                await sse.send_named(mapped.start(call.usage()))
            if isinstance(event, Finished):
                await sse.send_named(mapped.finish(event.finish_reason, call.usage(), event.stop_sequence))
            else:
                await sse.send_named(mapped.feed(event))
    return sse.response


def _request_id(request: web.Request) -> dict[str, str]:
    """Anthropic's clients read the request id from `request-id` (ours is also in X-Request-Id)."""
    return {"request-id": request[REQUEST_ID]} if REQUEST_ID in request else {}
