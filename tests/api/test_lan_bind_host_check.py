"""Issue 14 item 14 (review): on a non-loopback bind (0.0.0.0, a LAN address) a DNS-rebinding
page names its own host in both Host and Origin, so the Origin looked same-origin and no Host
check ran: a keyless LAN server answered any web page. Only IP literals, localhost, this
machine's host name and `allowed_hosts` may be the Host there."""
from __future__ import annotations

import logging
import socket
from pathlib import Path

import aiohttp
import pytest

from localllm.server.run import warn_if_open
from tests.api.fake_model import api_config, api_server

BODY = {"prompt": "hi", "max_tokens": 2}


@pytest.fixture
async def lan(tmp_path: Path):
    async with api_server(api_config(tmp_path, host="0.0.0.0", allowed_hosts="llm.lan")) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        yield http


@pytest.mark.parametrize("host", ["evil.example:8080", "evil.example", "llm.example.com", "localhost.evil.example"])
async def test_a_rebound_name_is_refused_on_a_lan_bind(lan: aiohttp.ClientSession, host: str):
    for response in (await lan.post("/v1/completions", json=BODY, headers={"Host": host, "Origin": f"http://{host}"}),
                     await lan.get("/v1/models", headers={"Host": host})):
        assert response.status == 403
        error = (await response.json())["error"]
        assert error["code"] == "host_not_allowed" and "allowed_hosts" in error["message"]


@pytest.mark.parametrize("host", ["192.168.1.20:8080", "10.0.0.5", "[fe80::1]:8080", "[::1]", "127.0.0.1:9",
                                  "localhost:8080", "LLM.lan:80", socket.gethostname(),
                                  f"{socket.gethostname()}.local:8080"])
async def test_addresses_own_names_and_allowed_hosts_pass(lan: aiohttp.ClientSession, host: str):
    assert (await lan.get("/v1/models", headers={"Host": host})).status == 200
    same_origin = await lan.post("/v1/completions", json=BODY, headers={"Host": host, "Origin": f"http://{host}"})
    assert same_origin.status == 200


async def test_a_star_allows_any_host(tmp_path: Path):
    async with api_server(api_config(tmp_path, host="0.0.0.0", allowed_hosts="*")) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        assert (await http.get("/v1/models", headers={"Host": "llm.example.com"})).status == 200


def test_a_keyless_lan_bind_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="localllm.server.run"):
        warn_if_open(api_config(tmp_path, host="0.0.0.0"))
        assert "NO API KEY" in caplog.text
        caplog.clear()
        warn_if_open(api_config(tmp_path, host="0.0.0.0", api_key="secret-1"))
        warn_if_open(api_config(tmp_path, host="127.0.0.1"))
        assert caplog.text == ""
