"""Server-sent events as OpenAI streams them: `data: {json}` lines, then `data: [DONE]`."""
from __future__ import annotations

import json

from aiohttp import web

from localllm.server.request_log import REQUEST_ID


class SseWriter:
    def __init__(self, request: web.Request, extra_headers: dict[str, str] | None = None) -> None:
        self._request = request
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # tell proxies not to buffer the stream
                # sent before the request-log middleware could add it to a finished response
                **({"X-Request-Id": request[REQUEST_ID]} if REQUEST_ID in request else {}),
                **(extra_headers or {}),
            }
        )

    async def start(self) -> None:
        await self.response.prepare(self._request)

    async def send(self, payload: dict) -> None:
        """Raises ConnectionResetError (or a subclass) once the client has gone."""
        await self.response.write(b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n")

    async def finish(self) -> None:
        await self.response.write(b"data: [DONE]\n\n")
        await self.response.write_eof()
