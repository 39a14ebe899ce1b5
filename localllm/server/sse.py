"""Server-sent events: OpenAI's `data: {json}` lines ending in `data: [DONE]`, or named events
(`event: name` before each `data:` line, no [DONE]) as Anthropic's and the Responses API stream them."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar

from aiohttp import web

from localllm.server.errors import CLIENT_CLOSED
from localllm.server.request_log import REQUEST_ID


class StreamWriter:
    """A response sent as a stream of events of `content_type` (SSE here, NDJSON in ndjson.py):
    `start` sends the headers, `finish` ends it."""

    content_type: str

    def __init__(self, request: web.Request, extra_headers: dict[str, str] | None = None) -> None:
        self._request = request
        self.response = web.StreamResponse(headers={
            "Content-Type": self.content_type,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # tell proxies not to buffer the stream
            # sent before the request-log middleware could add it to a finished response
            **({"X-Request-Id": request[REQUEST_ID]} if REQUEST_ID in request else {}),
            **(extra_headers or {}),
        })

    async def start(self) -> None:
        await self.response.prepare(self._request)

    async def finish(self) -> None:
        await self.response.write_eof()


class SseWriter(StreamWriter):
    content_type = "text/event-stream; charset=utf-8"

    def __init__(self, request: web.Request, extra_headers: dict[str, str] | None = None, *,
                 done: bool = True) -> None:
        super().__init__(request, extra_headers)
        self._done = done
        """End with OpenAI's `data: [DONE]` line (named-event streams have none)."""

    async def send(self, payload: dict, event: str | None = None) -> None:
        """One event, named by an `event:` line when `event` is given. Raises ConnectionResetError
        (or a subclass) once the client has gone."""
        head = b"event: " + event.encode() + b"\n" if event else b""
        await self.response.write(head + b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n")

    async def send_named(self, events: Iterable[tuple[str, dict]]) -> None:
        """(name, payload) events in order, each under its `event:` line."""
        for name, payload in events:
            await self.send(payload, event=name)

    async def finish(self) -> None:
        if self._done:
            await self.response.write(b"data: [DONE]\n\n")
        await super().finish()


Writer = TypeVar("Writer", bound=StreamWriter)


@asynccontextmanager
async def started_stream(request: web.Request, writer: Writer) -> AsyncIterator[Writer]:
    """`writer` started, and finished when the block ends. A client that has gone ends it quietly:
    CLIENT_CLOSED is set, and the chat path's exit aborts the rest of the answer."""
    await writer.start()
    try:
        yield writer
        await writer.finish()
    except ConnectionError:
        request[CLIENT_CLOSED] = True


def named_event_stream(request: web.Request, headers: dict[str, str]) -> AbstractAsyncContextManager[SseWriter]:
    """A started stream of named events (Anthropic's, the Responses API's), ended without [DONE]
    when the block ends; as `started_stream`."""
    return started_stream(request, SseWriter(request, headers, done=False))
