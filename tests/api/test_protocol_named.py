"""Every generation goes through one request path (server/chat_path.py), which names the
protocol it came in on in the request log line and in the requests metric."""
from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest

from tests.api.fake_model import api_config, api_server

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


async def test_the_log_line_and_metrics_name_the_protocol(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="localllm.requests")
    async with api_server(api_config(tmp_path)) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", {"prompt": "Say", "max_tokens": 3}),
                           ("/v1/chat/completions", {**CHAT, "stream": True})):
            response = await http.post(path, json=body)
            assert response.status == 200, await response.text()
            await response.read()
        metrics = await (await http.get("/metrics")).text()
    lines = [r.getMessage() for r in caplog.records if r.name == "localllm.requests" and "path=/v1/" in r.getMessage()]
    assert [line.split(" protocol=")[1].split(" ")[0] for line in lines] == [
        "openai.chat", "openai.completions", "openai.chat"]
    assert 'localllm_requests_total{endpoint="openai.chat",status="ok"} 2.0' in metrics
    assert 'localllm_requests_total{endpoint="openai.completions",status="ok"} 1.0' in metrics


async def test_requests_refused_before_their_adapter_still_name_the_protocol(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="localllm.requests")
    async with api_server(api_config(tmp_path, api_key="k")) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        for path in ("/api/chat", "/v1/messages", "/v1/chat/completions"):
            assert (await http.post(path, json={})).status == 401
        assert (await http.get("/health")).status == 200
    lines = {r.getMessage().split(" path=")[1].split(" ")[0]: r.getMessage().split(" protocol=")[1].split(" ")[0]
             for r in caplog.records if r.name == "localllm.requests"}
    assert lines["/api/chat"] == "ollama" and lines["/v1/messages"] == "anthropic"
    assert lines["/v1/chat/completions"] == "openai"
    assert lines.get("/health", "-") == "-"
