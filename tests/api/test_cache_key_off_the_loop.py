"""The response-cache key hashes every prompt and the chat template (json.dumps + sha256):
for a large body that is CPU work, done in a worker thread, never on the event loop."""
from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from localllm.server import chat_path
from tests.api.fake_model import api_config, api_server
from tests.api.loop_probe import record_loop_calls


async def test_the_response_cache_key_is_computed_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    on_loop = record_loop_calls(monkeypatch, chat_path, "key_for")
    config = api_config(tmp_path, cache_enabled=True, cache_dir=str(tmp_path / "cache"))
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 4}
    async with api_server(config) as server, aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        for _ in range(2):  # a miss that stores, then a hit
            response = await http.post("/v1/chat/completions", json=body)
            assert response.status == 200, await response.text()
    assert on_loop and not any(on_loop), on_loop
