"""A /metrics scrape reads the response cache's size and entry count from its SQLite database
(which another process may hold locked: diskcache waits up to its timeout): in a worker
thread, as /v1/stats does, never on the event loop."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from localllm.cache.response_cache import ResponseCache
from tests.api.fake_model import api_config, api_server


async def test_a_scrape_reads_the_response_cache_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    on_loop: list[bool] = []
    original = ResponseCache.stats

    def stats(self: ResponseCache) -> dict:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return original(self)

    monkeypatch.setattr(ResponseCache, "stats", stats)
    config = api_config(tmp_path, cache_enabled=True, cache_dir=str(tmp_path / "cache"))
    async with api_server(config) as server, aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        response = await http.get("/metrics")
        assert response.status == 200
        assert "localllm_response_cache_active 1.0" in await response.text()
    assert on_loop and not any(on_loop), on_loop
