"""Every 503 says when to come back (Retry-After): failed model loads and a stopped engine's /ready."""
from __future__ import annotations

from pathlib import Path

import aiohttp

from localllm.server.state import MODEL_KEY
from tests.api.fake_model import api_config, api_server


async def test_a_failed_load_of_a_named_model_is_a_503_with_retry_after(http: aiohttp.ClientSession):
    response = await http.post("/v1/completions", json={"model": "broken-model", "prompt": "x"})
    assert response.status == 503, await response.text()
    assert (await response.json())["error"]["code"] == "model_load_failed"
    assert int(response.headers["Retry-After"]) > 0


async def test_a_failed_default_model_is_a_503_with_retry_after(tmp_path: Path):
    async with api_server(api_config(tmp_path, model="broken-default")) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        ready = await http.get("/ready")
        assert ready.status == 503 and (await ready.json())["status"] == "failed"
        response = await http.post("/v1/completions", json={"prompt": "x"})
        assert response.status == 503, await response.text()
        assert (await response.json())["error"]["code"] == "model_load_failed"
        assert int(response.headers["Retry-After"]) > 0


async def test_ready_with_a_stopped_engine_is_a_503_with_retry_after(tmp_path: Path):
    async with api_server(api_config(tmp_path)) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        await server.app[MODEL_KEY].loaded.engine.stop()
        ready = await http.get("/ready")
        assert ready.status == 503 and (await ready.json())["status"] == "stopped"
        assert int(ready.headers["Retry-After"]) > 0
