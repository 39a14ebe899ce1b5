"""Issue 14 items 15/16: with several keys, /v1/stats is no side channel between tenants. A key sees
its own slots' details and aggregates only: another key's running request shows as a busy slot
with no request id, token counts or age, and an idle slot it left shows no cached length. Admin
keys and single-user mode (no keys) see every slot as before; the JSON keeps its shape (the TUI).
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from localllm.compose import load_model
from localllm.config import Config
from tests.serving import serving

pytestmark = pytest.mark.integration
ALICE = {"Authorization": "Bearer alice-secret"}
BOB = {"Authorization": "Bearer bob-secret"}
ROOT = {"Authorization": "Bearer root-secret"}
SLOT_KEYS = {"slot_id", "state", "request_id", "num_cached_tokens", "num_generated_tokens", "num_reused_tokens",
             "age_s"}
LONG_RUN = {"prompt": "Write a long story about a lighthouse keeper and the sea.", "max_tokens": 900,
            "ignore_eos": True, "temperature": 0, "stream": True}
"""Runs for many seconds on a CPU: the test reads /v1/stats while it runs, then hangs up."""


def config(data_dir: Path, **extra: object) -> Config:
    return Config.from_flat({"parallel": 2, "ctx": 2048, "threads": 2, "data_dir": str(data_dir),
                             "cache_enabled": False, **extra})


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text("alice:alice-secret\nbob:bob-secret\nroot:root-secret:admin\n")
    return path


@pytest.fixture(scope="module")
async def loaded(data_dir: Path, model_path: Path):
    model = await load_model(config(data_dir))
    yield model
    await model.engine.stop()


@asynccontextmanager
async def running(http: aiohttp.ClientSession, headers: dict) -> AsyncIterator[None]:
    """A streamed completion that has produced its first token; hung up (aborted) on exit."""
    response = await http.post("/v1/completions", json=LONG_RUN, headers=headers)
    assert response.status == 200, await response.text()
    while not (await response.content.readline()).startswith(b"data: {"):
        pass
    try:
        yield
    finally:
        response.close()


async def slots(http: aiohttp.ClientSession, headers: dict) -> tuple[str, list[dict]]:
    response = await http.get("/v1/stats", headers=headers)
    assert response.status == 200, await response.text()
    return await response.text(), (await response.json())["slots"]


async def wait_idle(http: aiohttp.ClientSession, headers: dict) -> list[dict]:
    for _ in range(600):  # the hung-up request is aborted within a step or two
        _, now = await slots(http, headers)
        if all(s["state"] == "idle" for s in now):
            return now
        await asyncio.sleep(0.05)
    raise AssertionError(f"slots still busy after the client hung up: {now}")


async def test_a_key_sees_only_its_own_slot_details(loaded, data_dir: Path, key_file: Path):
    async with serving(config(data_dir, api_key_file=str(key_file)), loaded) as server:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
            async with running(http, ALICE):
                _, admin = await slots(http, ROOT)
                busy = [s for s in admin if s["request_id"] is not None]
                assert len(busy) == 1 and busy[0]["state"] in ("prefill", "decode"), admin
                request_id, slot_id = busy[0]["request_id"], busy[0]["slot_id"]
                assert busy[0]["num_cached_tokens"] > 0
                text, bob = await slots(http, BOB)
                assert request_id not in text and "cache_namespace" not in text
                assert all(set(s) == SLOT_KEYS for s in bob)  # the same shape: the TUI still renders
                assert bob[slot_id] == {"slot_id": slot_id, "state": "busy", "request_id": None, "num_cached_tokens": 0,
                                        "num_generated_tokens": 0, "num_reused_tokens": 0, "age_s": 0.0}
                _, alice = await slots(http, ALICE)
                assert alice[slot_id]["request_id"] == request_id and alice[slot_id]["num_cached_tokens"] > 0
            admin = await wait_idle(http, ROOT)
            assert admin[slot_id]["num_cached_tokens"] > 0  # the slot keeps alice's tokens for reuse
            _, bob = await slots(http, BOB)
            assert bob[slot_id]["num_cached_tokens"] == 0  # ...and bob cannot read their length
            _, alice = await slots(http, ALICE)
            assert alice[slot_id]["num_cached_tokens"] == admin[slot_id]["num_cached_tokens"]


async def test_without_keys_stats_show_every_slot(loaded, data_dir: Path):
    async with serving(config(data_dir), loaded) as server:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
            async with running(http, {}):
                _, now = await slots(http, {})
                busy = [s for s in now if s["request_id"] is not None]
                assert len(busy) == 1 and busy[0]["num_cached_tokens"] > 0 and busy[0]["state"] != "busy"
                assert all(set(s) == SLOT_KEYS for s in now)
            await wait_idle(http, {})


async def test_with_shared_caches_no_key_but_admin_sees_slot_details(loaded, data_dir: Path, key_file: Path):
    """Sharing caches on purpose makes every key's namespace the same: no slot is told apart as
    the caller's, so a plain key gets aggregates only (its own request included)."""
    shared = config(data_dir, api_key_file=str(key_file), share_cache_across_keys=True)
    async with serving(shared, loaded) as server:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
            async with running(http, ALICE):
                _, admin = await slots(http, ROOT)
                request_id = next(s["request_id"] for s in admin if s["request_id"] is not None)
                for headers in (ALICE, BOB):
                    text, now = await slots(http, headers)
                    assert request_id not in text and {s["state"] for s in now} <= {"idle", "busy"}
            await wait_idle(http, ROOT)
