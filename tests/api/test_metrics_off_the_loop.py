"""A /metrics scrape reads the response cache's size and entry count from its SQLite database
(which another process may hold locked: diskcache waits up to its timeout): in a worker
thread, as /v1/stats does, never on the event loop."""
from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from localllm.cache.response_cache import ResponseCache
from tests.api.fake_model import api_config, api_server
from tests.api.loop_probe import record_loop_calls


async def test_a_scrape_reads_the_response_cache_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    on_loop = record_loop_calls(monkeypatch, ResponseCache, "stats")
    config = api_config(tmp_path, cache_enabled=True, cache_dir=str(tmp_path / "cache"))
    async with api_server(config) as server, aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        response = await http.get("/metrics")
        assert response.status == 200
        assert "localllm_response_cache_active 1.0" in await response.text()
    assert on_loop and not any(on_loop), on_loop
