"""POST /admin/models/pull reads the model catalogues (shipped and the operator's models.toml)
in a worker thread, never on the event loop, like every other route that opens the store."""
from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from localllm.models import catalogue
from tests.api.fake_model import api_config, api_server
from tests.api.loop_probe import record_loop_calls


async def test_a_pull_reads_the_catalogue_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    on_loop = record_loop_calls(monkeypatch, catalogue, "load_catalogue")
    async with api_server(api_config(tmp_path)) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        response = await http.post("/admin/models/pull", json={"model": "no-such-model"})
        assert response.status == 404
    assert on_loop and not any(on_loop), on_loop
