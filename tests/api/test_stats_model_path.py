"""/v1/stats shows the model's absolute path (which tells about the host's file system) to admin
keys and in single-user mode only; an inference key sees null."""
from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.api.fake_model import api_config, api_server


async def stats_as(http: aiohttp.ClientSession, key: str | None) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = await http.get("/v1/stats", headers=headers)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_only_admin_keys_see_the_model_path(tmp_path: Path):
    async with api_server(api_config(tmp_path, api_key="user", admin_api_key="boss")) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        assert (await stats_as(http, "user"))["model_path"] is None
        admin = await stats_as(http, "boss")
        assert admin["model_path"] and Path(admin["model_path"]).is_absolute()
        assert admin["layer_split"] == {}


async def test_single_user_mode_sees_the_model_path(http: aiohttp.ClientSession):
    assert (await stats_as(http, None))["model_path"]
