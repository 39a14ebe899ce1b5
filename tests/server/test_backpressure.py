"""A bounded wait queue: past it, 429 with Retry-After at once; admitted requests complete."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from localllm.config import Config
from tests.serving import served

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def base_url(data_dir: Path, model_path: Path):
    config = Config.from_flat({"parallel": 1, "max_waiting": 1, "ctx": 2048, "threads": 2, "data_dir": str(data_dir)})
    async with served(config) as server:
        yield str(server.make_url("/"))


async def test_burst_past_the_queue_bound_gets_429_and_admitted_requests_finish(base_url: str):
    body = {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    async with aiohttp.ClientSession(base_url=base_url) as http:
        responses = await asyncio.gather(*(http.post("/v1/completions", json=body) for _ in range(6)))
        statuses = sorted(r.status for r in responses)
        assert statuses.count(200) >= 2 and 429 in statuses
        for response in responses:
            payload = await response.json()
            if response.status == 429:
                assert response.headers["Retry-After"] == "1"
                assert payload["error"]["code"] == "queue_full"
            else:
                assert payload["choices"][0]["finish_reason"] == "length"
                assert payload["usage"]["completion_tokens"] == 24
        stats = await (await http.get("/v1/stats")).json()
        assert stats["num_busy_slots"] == 0 and stats["num_waiting"] == 0
        again = await http.post("/v1/completions", json=body)
        assert again.status == 200  # capacity comes back once the burst is served
