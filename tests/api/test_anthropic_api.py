"""Anthropic's Messages API over the scripted backend: wire shapes, SSE events, errors in
Anthropic's shape, and x-api-key auth, in seconds and without llama.cpp."""
from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.api.fake_model import REPLY, api_config, api_server


async def test_x_api_key_is_a_key_header_everywhere_and_auth_stays_closed(tmp_path: Path):
    """Anthropic's clients send `x-api-key`: it works wherever a Bearer key does; with both headers
    both must name the same key; a wrong or empty one is a 401."""
    async with api_server(api_config(tmp_path, api_key="k", admin_api_key="a")) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        right = await http.post("/v1/completions", json={"prompt": "x"}, headers={"x-api-key": "k"})
        assert right.status == 200 and (await right.json())["choices"][0]["text"] == REPLY
        assert (await http.get("/v1/models", headers={"x-api-key": " k "})).status == 200
        for headers in ({"x-api-key": "nope"}, {"x-api-key": ""}, {"x-api-key": "Bearer k"},
                        {"x-api-key": "nope", "Authorization": "Bearer k"},  # a wrong one is never outvoted
                        {"x-api-key": "k", "Authorization": "Bearer nope"},
                        {"x-api-key": "k", "Authorization": "Bearer a"}):  # two different keys
            wrong = await http.get("/v1/models", headers=headers)
            assert wrong.status == 401, headers
            assert (await wrong.json())["error"]["code"] == "invalid_api_key"
        both = await http.get("/v1/models", headers={"x-api-key": "k", "Authorization": "Bearer k"})
        assert both.status == 200
        # scopes hold whichever header carries the key
        admin = await http.post("/admin/models/load", json={"model": "scripted"}, headers={"x-api-key": "k"})
        assert admin.status == 403
        admin = await http.post("/admin/models/load", json={"model": "scripted"}, headers={"x-api-key": "a"})
        assert admin.status == 200
