"""A client that hangs up mid-answer on /v1/messages, /v1/responses and Ollama's /api: the slot and the model's
lease are freed, the rest of the answer is aborted, and no partial Response is stored."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from localllm.compose import start_served
from localllm.server.responses_store import RESPONSE_STORE_KEY
from localllm.server.state import MODEL_KEY
from tests.api.fake_model import ScriptedBackend, api_config
from tests.serving import serving

LONG_REPLY = "word " * 100
NUM_FREE_DECODES = 4
"""Decodes before the backend waits for the test: the answer has begun, and is far from done."""


class GatedBackend(ScriptedBackend):
    """Writes a long reply; after NUM_FREE_DECODES decodes it waits until `gate` is set, then goes on
    a little slower, so the server sees the hang-up long before the reply could end."""

    def __init__(self, num_ctx: int) -> None:
        super().__init__(num_ctx, LONG_REPLY)
        self.gate = threading.Event()
        self.num_decodes = 0

    def decode(self, chunks):
        self.num_decodes += 1
        if self.num_decodes > NUM_FREE_DECODES:
            self.gate.wait(10)
            time.sleep(0.002)
        return super().decode(chunks)


@asynccontextmanager
async def gated_server(tmp_path: Path) -> AsyncIterator[tuple[TestServer, GatedBackend, list]]:
    """The app over a GatedBackend; the store's put is watched (the list of what was stored)."""
    config = api_config(tmp_path)
    backend = GatedBackend(config.engine.ctx)
    loaded = await start_served(backend, config, name="scripted", path=Path("/models/m.gguf"), spec=None,
                                identity="scripted:gated", started_s=time.monotonic())
    try:
        async with serving(config, loaded) as server:  # as web.run_app serves: the handler must notice the hang-up
            store, stored = server.app[RESPONSE_STORE_KEY], []
            put = store.put
            store.put = lambda owner, response: stored.append(response) or put(owner, response)
            try:
                yield server, backend, stored
            finally:
                backend.gate.set()
    finally:
        await loaded.engine.stop()


async def wait_freed(http: aiohttp.ClientSession, server: TestServer) -> dict:
    """Polls until the answer was aborted, no slot is busy and no request holds the model's lease."""
    model = server.app[MODEL_KEY].models[0]
    for _ in range(500):
        stats = await (await http.get("/v1/stats")).json()
        if (stats["num_busy_slots"] == 0 and stats["num_waiting"] == 0 and model.in_flight == 0
                and stats["finished_by_reason"].get("abort", 0) == 1):
            return stats
        await asyncio.sleep(0.02)
    raise AssertionError(f"not freed: {stats}, leases {model.in_flight}")


async def hang_up_mid_stream(http: aiohttp.ClientSession, path: str, body: dict, first_text: str) -> None:
    """Streams `body`, reads until the first text delta (a line holding `first_text`), hangs up."""
    response = await http.post(path, json={**body, "stream": True})
    assert response.status == 200, await response.text()
    async for line in response.content:
        if first_text.encode() in line:
            break
    response.close()


@pytest.mark.parametrize("path, body, first_text", [
    ("/v1/messages", {"model": "scripted", "max_tokens": 400, "messages": [{"role": "user", "content": "hi"}]},
     '"text_delta"'),
    ("/v1/responses", {"input": "hi", "max_output_tokens": 400}, '"response.output_text.delta"'),
    ("/api/chat", {"model": "scripted", "options": {"num_predict": 400}, "messages": [{"role": "user", "content": "hi"}]},
     '"done": false'),
    ("/api/generate", {"model": "scripted", "options": {"num_predict": 400}, "prompt": "hi"}, '"done": false'),
])
async def test_hanging_up_mid_stream_frees_slot_and_lease_and_stores_nothing(tmp_path: Path, path: str, body: dict,
                                                                             first_text: str):
    async with gated_server(tmp_path) as (server, backend, stored), \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        await hang_up_mid_stream(http, path, body, first_text)
        await asyncio.sleep(0.05)  # only makes the hang-up land before the next token; the test holds without it
        backend.gate.set()
        await wait_freed(http, server)
        assert stored == []


@pytest.mark.parametrize("path, body", [
    ("/v1/responses", {"input": "hi", "max_output_tokens": 400}),
    ("/api/chat", {"model": "scripted", "stream": False, "options": {"num_predict": 400},
                   "messages": [{"role": "user", "content": "hi"}]}),
])
async def test_hanging_up_before_a_plain_response_stores_nothing(tmp_path: Path, path: str, body: dict):
    async with gated_server(tmp_path) as (server, backend, stored), \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as leaving:
            asking = asyncio.ensure_future(leaving.post(path, json=body))
            for _ in range(500):
                if backend.num_decodes > NUM_FREE_DECODES:
                    break
                await asyncio.sleep(0.01)
            asking.cancel()  # hangs up while the answer is being written
        await asyncio.sleep(0.05)
        backend.gate.set()
        await wait_freed(http, server)
        assert stored == []
