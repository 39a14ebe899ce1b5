"""Ollama's replies for what the output parser finds (tool calls, thinking), on the real app over
the scripted backend (tests/api/fake_model.py): the model's text is fixed, so the shapes are exact."""
from __future__ import annotations

import asyncio
import logging
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from localllm.config import Config
from localllm.models.manager import LoadedModel
from localllm.server.app import create_app
from tests.api.fake_model import CHAT_TEMPLATE, api_config, api_server, scripted_loader

CALL = '{"tool_calls": [{"name": "weather", "arguments": {"city": "Paris"}}]}'
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
ASK = [{"role": "user", "content": "Weather in Paris?"}]


async def lines(tmp_path: Path, reply: str, body: dict, template: str = CHAT_TEMPLATE) -> list[dict]:
    """The NDJSON lines /api/chat answers `body` with when the model writes `reply`."""
    loader = scripted_loader(reply=reply, template=template)
    async with api_server(api_config(tmp_path, ctx=8192), loader=loader) as server, \
            aiohttp.ClientSession() as http:
        response = await http.post(server.make_url("/api/chat"), json={"model": "scripted", **body})
        text = await response.text()
        assert response.status == 200, text
        wanted = "application/x-ndjson" if body.get("stream", True) else "application/json"
        assert response.headers["Content-Type"].startswith(wanted)
        return [json.loads(line) for line in text.splitlines()]


async def test_a_tool_call_streams_whole_with_arguments_as_an_object(tmp_path: Path):
    out = await lines(tmp_path, CALL, {"messages": ASK, "tools": TOOLS})
    assert [line["done"] for line in out] == [False] * (len(out) - 1) + [True]
    calls = [c for line in out for c in line["message"].get("tool_calls", [])]
    assert len(calls) == 1 and calls[0]["function"]["name"] == "weather"
    assert calls[0]["function"]["arguments"] == {"city": "Paris"}
    assert "".join(line["message"]["content"] for line in out) == ""
    assert out[-1]["done_reason"] == "stop" and out[-1]["eval_count"] == len(CALL) + 1  # + the end token


async def test_a_tool_call_not_streamed_and_its_result_sent_back(tmp_path: Path):
    out = await lines(tmp_path, CALL, {"messages": ASK, "tools": TOOLS, "stream": False})
    (reply,) = out
    assert reply["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    history = ASK + [reply["message"], {"role": "tool", "content": "sunny", "tool_name": "weather"}]
    (answer,) = await lines(tmp_path, "Sunny.", {"messages": history, "tools": TOOLS, "stream": False})
    assert answer["message"]["content"] == "Sunny." and "tool_calls" not in answer["message"]


async def test_thinking_goes_to_message_thinking(tmp_path: Path):
    template = CHAT_TEMPLATE + "{# </think> #}"  # a template that writes reasoning markers
    out = await lines(tmp_path, "<think>Paris is sunny.</think>Sunny.", {"messages": ASK, "think": True,
                                                                        "stream": False}, template)
    assert out[0]["message"]["thinking"] == "Paris is sunny." and out[0]["message"]["content"] == "Sunny."


@pytest.mark.parametrize("stream", [True, False])
async def test_generate_thinking_is_a_top_level_field(tmp_path: Path, stream: bool):
    template = CHAT_TEMPLATE + "{# </think> #}"
    loader = scripted_loader(reply="<think>hm</think>ok", template=template)
    async with api_server(api_config(tmp_path, ctx=8192), loader=loader) as server, \
            aiohttp.ClientSession() as http:
        response = await http.post(server.make_url("/api/generate"),
                                   json={"model": "scripted", "prompt": "hi", "stream": stream})
        out = [json.loads(line) for line in (await response.text()).splitlines()]
    assert "".join(line.get("thinking", "") for line in out) == "hm"
    assert "".join(line["response"] for line in out) == "ok" and out[-1]["done"]


@pytest.mark.parametrize("path", ["/api/embed", "/api/embeddings"])
async def test_a_bad_embedding_request_is_refused_before_its_model_loads(tmp_path: Path, path: str):
    loads: list[str] = []
    async with api_server(api_config(tmp_path), loads) as server, aiohttp.ClientSession() as http:
        response = await http.post(server.make_url(path), json={"model": "other", "input": "x", "prompt": "x",
                                                                "keep_alive": "forever"})
        assert response.status == 400 and "keep_alive" in (await response.json())["error"]
    assert "other" not in loads


async def test_delete_refuses_the_default_model_while_it_loads_under_a_quant_tag(tmp_path: Path):
    """The default model served as NAME:QUANT is found by its ref only until it has loaded: a
    delete of NAME in between must not take the files it is being loaded from."""
    release = asyncio.Event()

    async def slow_load(config: Config, on_progress=None) -> LoadedModel:
        await release.wait()
        return await scripted_loader(reply="ok")(config)

    server = TestServer(create_app(api_config(tmp_path, model="scripted:Q8_0"), loader=slow_load), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            response = await http.delete(server.make_url("/api/delete"), json={"model": "scripted"})
            assert response.status == 409 and "default" in (await response.json())["error"]
    finally:
        release.set()
        await server.close()


async def test_every_api_request_is_logged_as_ollama(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="localllm.requests")
    async with api_server(api_config(tmp_path)) as server, aiohttp.ClientSession() as http:
        for method, path, body in (("GET", "/api/version", None), ("GET", "/api/tags", None), ("GET", "/api/ps", None),
                                   ("POST", "/api/show", {"model": "scripted"}),
                                   ("POST", "/api/chat", {"model": "scripted", "messages": "not a list"})):
            async with http.request(method, server.make_url(path), json=body) as response:
                await response.read()
    lines = [r.getMessage() for r in caplog.records if r.name == "localllm.requests" and " path=/api/" in r.getMessage()]
    assert len(lines) == 5 and all(" protocol=ollama " in line for line in lines), lines
