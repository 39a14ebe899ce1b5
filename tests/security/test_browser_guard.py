"""Issue 14 item 14: a web page must not drive a server bound to loopback (no keys set).

JSON routes need application/json (a page can post text/plain or forms cross-site without a
preflight), loopback binds accept loopback Host names only (DNS rebinding), and cross-site
Origins are refused unless configured.
"""
from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from localllm.config import Config
from localllm.compose import load_model
from tests.serving import serving

pytestmark = pytest.mark.integration
BODY = {"prompt": "Hi", "max_tokens": 2, "temperature": 0}
APP_ORIGIN = "http://app.example"


def config(data_dir: Path, **extra: object) -> Config:
    return Config.from_flat({"parallel": 2, "ctx": 2048, "threads": 2, "data_dir": str(data_dir),
                             "cors_origins": APP_ORIGIN, "allowed_hosts": "llm.lan", **extra})


@pytest.fixture(scope="module")
async def loaded(data_dir: Path, model_path: Path):
    model = await load_model(config(data_dir))
    yield model
    await model.engine.stop()


@pytest.fixture(scope="module")
async def base_url(loaded, data_dir: Path):
    async with serving(config(data_dir), loaded) as server:
        yield str(server.make_url("/"))


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_json_routes_refuse_bodies_a_form_could_send(base_url: str, content_type: str | None):
    headers = {"Content-Type": content_type} if content_type else {}
    async with aiohttp.ClientSession(base_url=base_url) as http:
        for path in ("/v1/completions", "/admin/models/unload", "/v1/embeddings"):
            response = await http.post(path, data=json.dumps(BODY).encode(), headers=headers,
                                       skip_auto_headers=["Content-Type"])
            assert response.status == 415, path
            error = (await response.json())["error"]
            assert error["code"] == "unsupported_media_type" and "application/json" in error["message"]
        ok = await http.post("/v1/completions", data=json.dumps(BODY),
                             headers={"Content-Type": "application/json; charset=utf-8"})
        assert ok.status == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "attacker.localhost.evil.example",
                                  "192.0.2.7:8080"])
async def test_a_rebound_host_name_is_refused(base_url: str, host: str):
    async with aiohttp.ClientSession(base_url=base_url) as http:
        for response in (await http.get("/v1/models", headers={"Host": host}),
                         await http.post("/v1/completions", json=BODY, headers={"Host": host}),
                         await http.get("/metrics", headers={"Host": host})):
            assert response.status == 403
            assert (await response.json())["error"]["code"] == "host_not_allowed"


@pytest.mark.parametrize("host", ["localhost", "localhost:11434", "127.0.0.1:9", "[::1]:8080", "LOCALHOST",
                                  "llm.lan:8080"])
async def test_loopback_and_allowed_host_names_pass(base_url: str, host: str):
    async with aiohttp.ClientSession(base_url=base_url) as http:
        assert (await http.get("/v1/models", headers={"Host": host})).status == 200


async def test_cross_site_origins_are_refused_unless_configured(base_url: str):
    async with aiohttp.ClientSession(base_url=base_url) as http:
        for origin in ("http://evil.example", "null", "http://localhost.evil.example"):
            refused = await http.post("/v1/completions", json=BODY, headers={"Origin": origin})
            assert refused.status == 403 and (await refused.json())["error"]["code"] == "origin_not_allowed"
            assert (await http.get("/v1/models", headers={"Origin": origin})).status == 403
        listed = await http.post("/v1/completions", json=BODY, headers={"Origin": APP_ORIGIN})
        assert listed.status == 200 and listed.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        own = base_url.rstrip("/")  # a page this server served itself
        assert (await http.post("/v1/completions", json=BODY, headers={"Origin": own})).status == 200


async def test_a_public_bind_accepts_addresses_and_listed_names_only(loaded, data_dir: Path):
    async with serving(config(data_dir, host="0.0.0.0"), loaded) as server:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
            assert (await http.get("/v1/models", headers={"Host": "192.168.1.20:8080"})).status == 200
            assert (await http.get("/v1/models", headers={"Host": "llm.lan"})).status == 200
            rebound = {"Host": "llm.example.com", "Origin": "http://llm.example.com"}  # DNS rebinding to a LAN IP
            assert (await http.get("/v1/models", headers=rebound)).status == 403
            cross = await http.get("/v1/models", headers={"Host": "llm.lan", "Origin": "http://evil.example"})
            assert cross.status == 403  # origins are checked on every bind
