"""Streamed answers carry X-Request-Id like every other response (the id in the request log
line), though their headers go out before the request-log middleware sees the response."""
from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.api.fake_model import api_config, api_server


@pytest.mark.parametrize("path, body, content_type", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True}, "text/event-stream"),
    ("/v1/completions", {"prompt": "hi", "stream": True}, "text/event-stream"),
    ("/api/chat", {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}, "application/x-ndjson"),
])
async def test_streamed_answers_carry_the_request_id(tmp_path: Path, path: str, body: dict, content_type: str):
    async with api_server(api_config(tmp_path)) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        given = await http.post(path, json=body, headers={"X-Request-Id": "client-id-7"})
        assert given.content_type == content_type and given.headers.get("X-Request-Id") == "client-id-7"
        generated = await http.post(path, json=body)
        assert generated.headers.get("X-Request-Id", "").startswith("req-")
        await given.read(), await generated.read()
