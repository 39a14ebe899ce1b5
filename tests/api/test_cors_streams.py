"""A page on a listed cors_origins origin can read streamed answers too: SSE responses send
their headers before the handler returns, so the CORS headers must already be on them."""
from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.api.fake_model import REPLY, api_config, api_server

APP = "http://app.example"


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True}),
    ("/v1/completions", {"prompt": "hi", "stream": True}),
])
async def test_streamed_answers_carry_the_cors_headers(tmp_path: Path, path: str, body: dict):
    async with api_server(api_config(tmp_path, cors_origins=APP)) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        response = await http.post(path, json=body, headers={"Origin": APP})
        assert response.status == 200 and response.content_type == "text/event-stream"
        assert response.headers.get("Access-Control-Allow-Origin") == APP, dict(response.headers)
        text = await response.text()
        assert all(c in text for c in REPLY) and text.endswith("data: [DONE]\n\n")
        plain = await http.post(path, json={**body, "stream": False}, headers={"Origin": APP})
        assert plain.headers.get("Access-Control-Allow-Origin") == APP
        unlisted = await http.post(path, json=body)  # no Origin: no CORS headers
        assert "Access-Control-Allow-Origin" not in unlisted.headers
