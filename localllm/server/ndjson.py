"""Newline-delimited JSON streams, as Ollama's /api/* sends them: one JSON object per line."""
from __future__ import annotations

import json

from aiohttp import web

from localllm.server.sse import StreamWriter


class NdjsonWriter(StreamWriter):
    """The same stream as SseWriter's (start, send, finish, response), one JSON line per event."""

    content_type = "application/x-ndjson"

    async def send(self, payload: dict) -> None:
        """Raises ConnectionResetError (or a subclass) once the client has gone."""
        await self.response.write(json.dumps(payload, ensure_ascii=False).encode() + b"\n")


class LastEventWriter:
    """A stream answered as one JSON object (Ollama's `stream: false`): the last event sent, with
    status 500 when it is an `{"error": ...}` line. Nothing is sent before `finish`."""

    def __init__(self, extra_headers: dict[str, str] | None = None) -> None:
        self._headers = extra_headers or {}
        self._last: dict = {}
        self.response: web.StreamResponse = web.json_response({})

    async def start(self) -> None:
        pass

    async def send(self, payload: dict) -> None:
        self._last = payload

    async def finish(self) -> None:
        status = 500 if "error" in self._last else 200
        self.response = web.json_response(self._last, status=status, headers=self._headers)
