"""Issue 14 items 19 and 27: the request log cannot be forged through a request (control
characters are escaped in every field), and a client that hangs up is logged once as 499,
without a traceback, and counted apart from server errors.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from localllm.config import Config
from localllm.server.auth import KEY_ID
from localllm.server.errors import error_middleware
from localllm.server.request_log import MODEL_NAME, request_log_middleware
from tests.serving import served

pytestmark = pytest.mark.integration
FIELDS = ["id", "method", "path", "protocol", "status", "model", "key", "prompt_tokens", "completion_tokens", "tokens",
          "ttft_ms", "duration_ms"]
FORGED = "\nlocalllm.requests: request id=forged status=200\x1b[2K\r"


def request_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "localllm.requests"]


async def echo_fields(request: web.Request) -> web.Response:
    body = await request.json()
    request[KEY_ID] = body["key"]  # stand-ins for what handlers copy from a request into the log
    request[MODEL_NAME] = body["model"]
    return web.json_response({})


async def test_control_characters_are_escaped_in_every_field(aiohttp_client, caplog):
    caplog.set_level(logging.INFO, logger="localllm.requests")
    app = web.Application(middlewares=[request_log_middleware, error_middleware])
    app.router.add_post("/v1/echo", echo_fields)
    client = await aiohttp_client(app)
    await client.post("/v1/echo", json={"key": FORGED, "model": "m" + FORGED})
    await client.get("/v1/%0Aid=forged%20status=200%1B%5B2K")  # a 404, decoded path in the log
    lines = request_lines(caplog)
    assert len(lines) == 2
    for line in lines:
        assert not any(ord(c) < 0x20 or c == "\x7f" for c in line), line
        names = [field.split("=", 1)[0] for field in line.split(" ")[1:]]
        assert names == FIELDS, line  # nothing forged a field either
    assert "key=\\x0alocalllm.requests:\\x20request" in lines[0]
    assert "path=/v1/\\x0aid=forged\\x20status=200\\x1b[2K" in lines[1]


@pytest.fixture(scope="module")
async def server(data_dir: Path, model_path: Path):
    config = Config.from_flat({"parallel": 2, "ctx": 2048, "threads": 2, "data_dir": str(data_dir),
                               "cache_enabled": False})
    async with served(config) as running:
        yield running


def _raw_request(port: int) -> bytes:
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 64, "stream": True, "ignore_eos": True}).encode()
    return (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _hang_up(port: int, read_first: bool) -> None:
    """Sends a streamed completion and resets the connection (at once, or after the first bytes)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_raw_request(port))
        if read_first:
            sock.recv(64)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST


async def _until(predicate, timeout_s: float = 60.0) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if predicate():
            return
        await asyncio.sleep(0.1)


async def test_a_client_that_hangs_up_is_a_499_without_a_traceback(server, caplog):
    caplog.set_level(logging.INFO)
    port = server.port
    for read_first in (False, True, False, True):
        await asyncio.to_thread(_hang_up, port, read_first)
        await _until(lambda: any("path=/v1/completions" in line for line in request_lines(caplog)))
        lines = [line for line in request_lines(caplog) if "path=/v1/completions" in line]
        assert len(lines) == 1 and "status=499" in lines[0], lines  # once, as 499
        caplog.clear()
    async with aiohttp.ClientSession() as http:
        metrics = await (await http.get(str(server.make_url("/metrics")))).text()
        for _ in range(100):  # the abort reaches the engine thread a step after the 499 is logged
            stats = await (await http.get(str(server.make_url("/v1/stats")))).json()
            if stats["num_busy_slots"] == 0 and stats["num_waiting"] == 0:
                break
            await asyncio.sleep(0.1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert "localllm_client_disconnects_total 4.0" in metrics
    assert 'status="500"' not in metrics
    assert stats["num_busy_slots"] == 0 and stats["num_waiting"] == 0
