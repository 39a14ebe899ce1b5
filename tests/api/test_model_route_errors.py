"""Issue 14 (review): model routes answer the right status. A broken catalogue is the operator's
fault (503 catalogue_invalid on /v1/plan too, not 400), a malformed hub reference is the client's
(400 naming model, not 404), and /v1/plan, which connects to the RPC peers while rpc_servers is
set, then needs the admin scope like /admin/*."""
from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.api.fake_model import api_config, api_server

RPC = "127.0.0.1:9"  # nothing listens there


async def test_plan_with_a_malformed_catalogue_is_503(tmp_path: Path):
    async with api_server(api_config(tmp_path)) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        (tmp_path / "models.toml").write_text("[models.x\nfile = ")
        response = await http.get("/v1/plan", params={"model": "x"})
        payload = await response.json()
        assert response.status == 503, payload
        assert payload["error"]["code"] == "catalogue_invalid"


@pytest.mark.parametrize("ref", ["a/b/../c.gguf", "org/repo/sub/../../x.gguf", "../b/c.gguf", "org/re po/x.gguf"])
async def test_a_malformed_hub_reference_is_a_bad_request(http: aiohttp.ClientSession, ref: str):
    response = await http.post("/admin/models/pull", json={"model": ref})
    payload = await response.json()
    assert response.status == 400, payload
    assert payload["error"]["param"] == "model"


async def test_plan_over_rpc_servers_needs_the_admin_scope(tmp_path: Path, model_path: Path):
    config = api_config(tmp_path, model=str(model_path), rpc=RPC, api_key="user-secret", admin_api_key="admin-secret")
    async with api_server(config) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        user = await http.get("/v1/plan", headers={"Authorization": "Bearer user-secret"})
        assert user.status == 403 and (await user.json())["error"]["code"] == "insufficient_scope"
        admin = await http.get("/v1/plan", headers={"Authorization": "Bearer admin-secret"})
        assert admin.status == 503 and (await admin.json())["error"]["code"] == "rpc_unavailable", await admin.text()
        assert admin.headers["Retry-After"] == "10"  # a peer may come back: clients retry, not give up


async def test_plan_without_rpc_servers_needs_no_admin_scope(tmp_path: Path, model_path: Path):
    config = api_config(tmp_path, model=str(model_path), api_key="user-secret", admin_api_key="admin-secret")
    async with api_server(config) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        user = await http.get("/v1/plan", headers={"Authorization": "Bearer user-secret"})
        assert user.status == 200 and "n_gpu_layers" in await user.json(), await user.text()
