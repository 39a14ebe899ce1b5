"""Issue 14 (review): `stream_options.include_usage` took any truthy value ("false", 1, {})
as true, and an out-of-range `logprobs` on /v1/completions was blamed on `top_logprobs`, a
parameter the client never sent."""
from __future__ import annotations

import aiohttp
import pytest

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
COMPLETION = {"prompt": "hi", "max_tokens": 2}


async def error_of(response: aiohttp.ClientResponse) -> dict:
    payload = await response.json()
    assert response.status == 400, payload
    return payload["error"]


@pytest.mark.parametrize("value", ["false", "true", 1, 0, {}, [True]])
@pytest.mark.parametrize("path, body", [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
async def test_include_usage_must_be_a_boolean(http: aiohttp.ClientSession, path: str, body: dict, value: object):
    request = {**body, "stream": True, "stream_options": {"include_usage": value}}
    error = await error_of(await http.post(path, json=request))
    assert error["param"] == "stream_options" and "include_usage" in error["message"]


@pytest.mark.parametrize("value, wanted", [(True, True), (False, False), (None, False)])
async def test_a_boolean_include_usage_still_works(http: aiohttp.ClientSession, value: bool | None, wanted: bool):
    request = {**COMPLETION, "stream": True, "stream_options": {"include_usage": value}}
    response = await http.post("/v1/completions", json=request)
    assert response.status == 200
    assert ('"usage": {' in await response.text()) is wanted


@pytest.mark.parametrize("value", [-1, 21, 10**30])
async def test_an_out_of_range_completion_logprobs_names_logprobs(http: aiohttp.ClientSession, value: int):
    error = await error_of(await http.post("/v1/completions", json={**COMPLETION, "logprobs": value}))
    assert error["param"] == "logprobs" and "top_logprobs" not in error["message"]


async def test_an_out_of_range_chat_top_logprobs_still_names_top_logprobs(http: aiohttp.ClientSession):
    error = await error_of(await http.post("/v1/chat/completions",
                                           json={**CHAT, "logprobs": True, "top_logprobs": 21}))
    assert error["param"] == "top_logprobs"
