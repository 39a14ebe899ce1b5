"""The response cache through the API: what hits, what bypasses, and a hit's shape."""
from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from localllm.config import Config
from tests.serving import served
from localllm.compose import load_model
from localllm.server.app import create_app

pytestmark = pytest.mark.integration
CHAT = {"messages": [{"role": "user", "content": "Name three fruits."}], "max_tokens": 10, "temperature": 0}


@pytest.fixture(scope="module")
async def http(data_dir: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    config = Config.from_flat({"parallel": 2, "ctx": 4096, "threads": 2, "data_dir": str(data_dir),
                               "cache_dir": str(tmp_path_factory.mktemp("cache"))})
    async with served(config) as server:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as session:
            yield session


async def post(http, body: dict, **headers) -> tuple[str, dict]:
    response = await http.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status == 200, await response.text()
    return response.headers["X-LocalLLM-Cache"], await response.json()


async def test_exact_repeat_of_a_greedy_request_hits(http):
    first_state, first = await post(http, CHAT)
    second_state, second = await post(http, CHAT)
    assert (first_state, second_state) == ("miss", "hit")
    assert second["choices"] == first["choices"]
    usage = second["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"]  # marked as cached
    assert usage["completion_tokens"] == first["usage"]["completion_tokens"]


@pytest.mark.parametrize("change", [{"max_tokens": 11}, {"stop": ["zz"]}, {"top_p": 0.5}, {"seed": 7},
                                    {"messages": [{"role": "user", "content": "Name four fruits."}]},
                                    {"response_format": {"type": "json_object"}}, {"logprobs": True}])
async def test_every_part_of_the_request_is_in_the_key(http, change):
    await post(http, CHAT)
    state, _ = await post(http, {**CHAT, **change})
    assert state == "miss"


async def test_sampled_requests_bypass_unless_they_opt_in(http):
    sampled = {**CHAT, "temperature": 0.9}
    assert (await post(http, sampled))[0] == "bypass"
    assert (await post(http, sampled))[0] == "bypass"
    opted = {**sampled, "cache": True}
    state, first = await post(http, opted)
    again, second = await post(http, opted)
    assert (state, again) == ("miss", "hit") and second["choices"] == first["choices"]
    assert (await post(http, sampled, **{"X-LocalLLM-Cache": "on"}))[0] == "hit"


async def test_greedy_requests_can_opt_out(http):
    await post(http, CHAT)
    assert (await post(http, {**CHAT, "cache": False}))[0] == "bypass"
    assert (await post(http, CHAT, **{"X-LocalLLM-Cache": "off"}))[0] == "bypass"


async def sse_events(http, body: dict) -> tuple[str, list]:
    response = await http.post("/v1/chat/completions", json={**body, "stream": True})
    events = []
    for line in (await response.text()).splitlines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            event = payload if payload == "[DONE]" else json.loads(payload)
            if isinstance(event, dict):
                event.pop("id"), event.pop("created")
            events.append(event)
    return response.headers["X-LocalLLM-Cache"], events


async def test_streamed_hit_is_shaped_like_a_streamed_miss(http):
    body = {**CHAT, "max_tokens": 16, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Describe the sea."}]}
    miss_state, miss = await sse_events(http, body)
    hit_state, hit = await sse_events(http, body)
    assert (miss_state, hit_state) == ("miss", "hit")
    usage_miss, usage_hit = miss[-2].pop("usage"), hit[-2].pop("usage")
    assert hit == miss  # same chunks, same pieces, same order
    assert usage_hit["prompt_tokens_details"]["cached_tokens"] == usage_hit["prompt_tokens"]
    assert usage_hit["completion_tokens"] == usage_miss["completion_tokens"]


async def test_stats_and_metrics_count_hits_and_misses(http):
    await post(http, CHAT)
    stats = (await (await http.get("/v1/stats")).json())["response_cache"]
    assert stats["active"] and stats["hits"] >= 1 and stats["misses"] >= 1 and stats["size_bytes"] > 0
    metrics = await (await http.get("/metrics")).text()
    assert "localllm_response_cache_hits_total" in metrics


async def test_a_broken_cache_directory_never_breaks_serving(data_dir: Path, model_path: Path, tmp_path: Path):
    broken = tmp_path / "cache-is-a-file"
    broken.write_text("not a directory")
    config = Config.from_flat({"parallel": 1, "ctx": 1024, "threads": 2, "data_dir": str(data_dir),
                               "cache_dir": str(broken)})
    loaded = await load_model(config)
    server = TestServer(create_app(config, loaded=loaded), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as session:
            for _ in range(2):
                state, body = await post(session, CHAT)
                assert state == "bypass" and body["choices"][0]["message"]["content"]
            stats = (await (await session.get("/v1/stats")).json())["response_cache"]
            assert stats["active"] is False and stats["errors"] >= 1 and stats["error"]
    finally:
        await server.close()
        await loaded.engine.stop()
