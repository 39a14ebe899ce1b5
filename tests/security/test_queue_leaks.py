"""Refused requests leave no queue entries behind, and embeddings share generation's admission
bound on their own worker (issue 14, items 1 and 4)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from localllm.config import Config
from localllm.server.state import MODEL_KEY
from tests.serving import served

pytestmark = pytest.mark.integration

NUM_SLOTS, MAX_WAITING = 2, 8
GOOD = {"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0, "ignore_eos": True, "cache": False}


@pytest.fixture(scope="module")
async def server(data_dir: Path, model_path: Path):
    config = Config.from_flat({"parallel": NUM_SLOTS, "max_waiting": MAX_WAITING, "ctx": 2048, "threads": 2,
                               "data_dir": str(data_dir)})
    async with served(config) as test_server:
        yield test_server


@pytest.fixture(scope="module")
async def http(server):
    async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as session:
        yield session


async def wait_idle(http: aiohttp.ClientSession) -> dict:
    for _ in range(500):
        stats = await (await http.get("/v1/stats")).json()
        if stats["num_busy_slots"] == 0 and stats["num_waiting"] == 0:
            return stats
        await asyncio.sleep(0.02)
    raise AssertionError("server did not become idle")


async def test_lists_of_prompts_with_a_bad_last_prompt_leak_nothing(http, server):
    engine = server.app[MODEL_KEY].loaded.engine
    bad_bodies = [
        {**GOOD, "prompt": [[2]] * 7 + [[999_999_999]]},  # out-of-vocabulary token id
        {**GOOD, "prompt": ["fine"] * 7 + ["word " * 3000]},  # longer than a slot's context
        {**GOOD, "prompt": [[2]] * 7 + [[2] * 3000]},
    ]
    for i in range(20):
        response = await http.post("/v1/completions", json=bad_bodies[i % len(bad_bodies)])
        assert response.status == 400, await response.text()
    surrogate = '{"prompt": ["fine", "fine", "\\ud800"], "max_tokens": 4}'
    for _ in range(5):
        response = await http.post("/v1/completions", data=surrogate, headers={"Content-Type": "application/json"})
        assert response.status == 400
    assert engine.has_room_for(NUM_SLOTS + MAX_WAITING)  # no stream left registered
    responses = await asyncio.gather(*(http.post("/v1/completions", json=GOOD) for _ in range(NUM_SLOTS + MAX_WAITING)))
    assert [r.status for r in responses] == [200] * (NUM_SLOTS + MAX_WAITING)
    stats = await wait_idle(http)
    assert stats["num_waiting"] == 0 and stats["num_busy_slots"] == 0


async def num_done_settled(calls: list[asyncio.Future], expected: int) -> int:
    """Waits until `expected` calls are done (15 s at most), then a little more: no other may finish."""
    for _ in range(300):
        if sum(c.done() for c in calls) >= expected:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    return sum(c.done() for c in calls)


async def test_embeddings_are_admitted_like_generation_and_do_not_hold_shared_threads(http, server):
    """With the embedding worker held, a burst of embedding calls gets 429 + Retry-After past
    the in-flight bound, and /v1/models (which uses the default executor) still answers."""
    backend = server.app[MODEL_KEY].loaded.engine.backend
    admitted_count = NUM_SLOTS + MAX_WAITING
    backend._embedding_init.acquire()  # every embedding job blocks inside the backend
    try:
        calls = [asyncio.ensure_future(http.post("/v1/embeddings", json={"input": f"text {i}"})) for i in range(40)]
        assert await num_done_settled(calls, 40 - admitted_count) == 40 - admitted_count
        refused = [call for call in calls if call.done()]
        for call in refused:
            response = call.result()
            assert response.status == 429 and response.headers["Retry-After"] == "1"
            assert (await response.json())["error"]["code"] == "queue_full"
        models = await asyncio.wait_for(http.get("/v1/models"), timeout=30)
        assert models.status == 200
        busy = await http.post("/v1/completions", json=GOOD)
        assert busy.status == 429  # the embedding jobs hold the shared in-flight budget
    finally:
        backend._embedding_init.release()
    admitted = await asyncio.gather(*(call for call in calls if call not in refused))
    assert [r.status for r in admitted] == [200] * admitted_count
    assert (await http.post("/v1/completions", json=GOOD)).status == 200


async def test_an_abandoned_embedding_call_counts_until_its_job_ends(http, server):
    engine = server.app[MODEL_KEY].loaded.engine
    full = NUM_SLOTS + MAX_WAITING
    engine.backend._embedding_init.acquire()
    try:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(http.post("/v1/embeddings", json={"input": ["a", "b"]}), timeout=1)
        assert not engine.has_room_for(full)  # the job still waits on the worker
    finally:
        engine.backend._embedding_init.release()
    for _ in range(500):
        if engine.has_room_for(full):
            break
        await asyncio.sleep(0.02)
    assert engine.has_room_for(full)
