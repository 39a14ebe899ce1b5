"""GET /v1/stats?model=NAME reads a loaded model's stats and changes nothing: it never loads a
model. (A page the operator visits can send such a GET to a keyless loopback server with an
<img> tag, without an Origin header; a load there could evict the operator's idle models.)"""
from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.api.fake_model import api_config, api_server


async def test_stats_of_a_model_that_is_not_loaded_is_a_404_and_loads_nothing(tmp_path: Path):
    loads: list[str] = []
    async with api_server(api_config(tmp_path), loads) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        response = await http.get("/v1/stats", params={"model": "other"})
        body = await response.json()
        assert response.status == 404, body
        assert body["error"]["param"] == "model" and body["error"]["code"] == "model_not_found"
        assert loads == ["scripted"]
        models = await (await http.get("/v1/models")).json()
        assert [m["id"] for m in models["data"] if m.get("status") != "available"] == ["scripted"]
        loaded = await http.post("/admin/models/load", json={"model": "other"})  # the way to load it
        assert loaded.status == 200
        stats = await http.get("/v1/stats", params={"model": "other"})
        assert stats.status == 200 and (await stats.json())["model"] == "other"
        assert loads == ["scripted", "other"]
