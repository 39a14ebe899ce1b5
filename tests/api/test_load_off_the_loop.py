"""Loading a model never blocks the event loop on disk work: the prefix-state store opens its
SQLite database and indexes the entries already on disk (up to thousands of entry headers)
in a worker thread, not on the loop that serves /health and running streams."""
from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from localllm.cache.prefix_states import PrefixStateDiskStore
from tests.api.fake_model import api_config, api_server
from tests.api.loop_probe import record_loop_calls


async def test_the_prefix_state_store_opens_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    on_loop = record_loop_calls(monkeypatch, PrefixStateDiskStore, "_refresh")
    config = api_config(tmp_path, kv_cache_min_tokens=16, cache_dir=str(tmp_path / "cache"))
    async with api_server(config) as server, aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        assert (await http.post("/admin/models/load", json={"model": "other"})).status == 200
        stats = await (await http.get("/v1/stats")).json()
        assert stats["prefix_states"]["active"], stats["prefix_states"]
    assert len(on_loop) >= 2 and not any(on_loop), on_loop  # the default model and "other"
