"""Per-key usage names the protocol each request came in on (/v1/stats and /metrics)."""
from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.api.fake_model import api_config, api_server

KEY = {"Authorization": "Bearer k"}
HELLO = [{"role": "user", "content": "hi"}]


async def test_usage_per_key_is_split_by_protocol(tmp_path: Path):
    async with api_server(api_config(tmp_path, api_key="k")) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        calls = [("/v1/chat/completions", {"messages": HELLO, "max_tokens": 3}),
                 ("/v1/chat/completions", {"messages": HELLO, "max_tokens": 3, "stream": True}),
                 ("/v1/messages", {"model": "gemma3-270m", "messages": HELLO, "max_tokens": 3}),
                 ("/api/chat", {"model": "gemma3-270m", "messages": HELLO, "stream": False}),
                 ("/v1/embeddings", {"input": "hi"})]
        for path, body in calls:
            response = await http.post(path, json=body, headers=KEY)
            assert response.status == 200, (path, await response.text())
            await response.read()
        keys = (await (await http.get("/v1/stats", headers=KEY)).json())["keys"]
        metrics = await (await http.get("/metrics", headers=KEY)).text()
    protocols = keys["default"]["protocols"]
    assert {name: counts["requests"] for name, counts in protocols.items()} == {
        "openai.chat": 2, "anthropic": 1, "ollama": 1, "openai": 1}  # embeddings: the route family
    assert sum(counts["tokens"] for counts in protocols.values()) == keys["default"]["tokens"] > 0
    assert all(counts["tokens"] > 0 for counts in protocols.values())
    assert 'localllm_key_protocol_requests_total{key="default",protocol="openai.chat"} 2.0' in metrics
    assert 'localllm_key_protocol_requests_total{key="default",protocol="anthropic"} 1.0' in metrics
