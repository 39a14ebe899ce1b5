"""Issue 14 item 22: the cache directory is untrusted. Pickles planted in it never run, a
corrupted or truncated KV state is refused (the request runs cold, with the cold answer),
a SQLite error in the KV store fails no request, stale index entries do not hide valid
shorter ones, and the write queue is bounded."""
from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path

import aiohttp
import diskcache
import pytest

from localllm.cache import prefix_states
from localllm.cache.prefix_states import PrefixStateConfig, PrefixStateDiskStore
from localllm.cache.response_cache import ResponseCache, ResponseCacheConfig
from localllm.config import Config
from tests.serving import served

def long_prompt(topic: str) -> str:
    """About 700 tokens; prompts of different topics share no prefix worth restoring."""
    return f"Topic: {topic}. " + PREAMBLE + f"\nQuestion: what about {topic}?\nAnswer:"


MIN_TOKENS = 256
PREAMBLE = "You are a terse assistant for a hardware shop. " + " ".join(
    f"Policy {i}: items must be returned within {i + 10} days with a receipt." for i in range(40))


class Planted:
    """Unpickling this creates `marker`: proof that something unpickled cache content."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def plant_pickles(directory: Path, marker: Path) -> None:
    """What anyone who can write the cache directory can do: pickled keys and values."""
    with diskcache.Cache(str(directory)) as cache:
        cache.set(Planted(marker), b"x")
        cache.set(("tokens", "0" * 64), Planted(marker), tag="any")  # the old index entry shape
        cache.set("kv-generation", Planted(marker))


def config_for(data_dir: Path, cache_dir: Path) -> Config:
    return Config.from_flat({"parallel": 2, "ctx": 4096, "threads": 2, "data_dir": str(data_dir),
                             "cache_dir": str(cache_dir), "kv_cache_min_tokens": MIN_TOKENS})


async def complete(http: aiohttp.ClientSession, prompt: str, max_tokens: int = 8) -> tuple[str, int]:
    """Greedy text and cached prompt tokens; the response cache bypassed."""
    response = await http.post("/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens,
                                                        "temperature": 0, "cache": False})
    assert response.status == 200, await response.text()
    body = await response.json()
    return body["choices"][0]["text"], body["usage"]["prompt_tokens_details"]["cached_tokens"]


async def prefix_state_stats(http: aiohttp.ClientSession) -> dict:
    return (await (await http.get("/v1/stats")).json())["prefix_states"]


async def wait_for_saves(http: aiohttp.ClientSession, count: int) -> None:
    for _ in range(600):
        if (await prefix_state_stats(http))["saved"] >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"states were not saved: {await prefix_state_stats(http)}")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("untrusted-cache")
    marker = path.parent / f"{path.name}-unpickled"
    plant_pickles(path / "kv", marker)
    plant_pickles(path / "responses", marker)
    return path


@pytest.fixture(scope="module")
async def server(data_dir: Path, model_path: Path, cache_dir: Path):
    async with served(config_for(data_dir, cache_dir)) as test_server:
        async with aiohttp.ClientSession(base_url=str(test_server.make_url("/"))) as http:
            yield http


def marker_of(cache_dir: Path) -> Path:
    return cache_dir.parent / f"{cache_dir.name}-unpickled"


@pytest.mark.integration
async def test_pickles_planted_before_start_never_run(server, cache_dir: Path):
    text, _ = await complete(server, long_prompt("cards"))
    await wait_for_saves(server, 1)  # the store opened, indexed its directory and wrote into it
    assert text and not marker_of(cache_dir).exists()


@pytest.mark.integration
async def test_a_pickled_response_cache_value_is_a_miss_and_never_unpickled(server, cache_dir: Path):
    body = {"messages": [{"role": "user", "content": "Name two tools."}], "max_tokens": 6, "temperature": 0}
    first = await server.post("/v1/chat/completions", json=body)
    assert first.headers["X-LocalLLM-Cache"] == "miss"
    answer = (await first.json())["choices"]
    database = sqlite3.connect(cache_dir / "responses" / "cache.db")  # (iterkeys would unpickle planted keys)
    keys = [key for (key,) in database.execute("SELECT key FROM Cache WHERE raw = 1 AND typeof(key) = 'text'")]
    database.close()
    with diskcache.Cache(str(cache_dir / "responses")) as cache:  # overwrite every stored answer
        for key in keys:
            cache.set(key, Planted(marker_of(cache_dir)))
    assert keys
    again = await server.post("/v1/chat/completions", json=body)
    assert again.status == 200 and again.headers["X-LocalLLM-Cache"] == "miss"
    assert (await again.json())["choices"] == answer
    assert not marker_of(cache_dir).exists()


@pytest.mark.integration
async def test_a_corrupted_or_truncated_state_is_refused_and_the_request_runs_cold(
        server, data_dir: Path, cache_dir: Path):
    prompts = [long_prompt(item) for item in ("drills", "ladders")]
    saved = (await prefix_state_stats(server))["saved"]
    cold = [await complete(server, prompt) for prompt in prompts]
    assert all(cached < MIN_TOKENS for _, cached in cold)  # nothing from disk (a few tokens from live slots)
    await wait_for_saves(server, saved + 2)
    files = sorted((cache_dir / "kv").rglob("*.val"))
    assert len(files) >= 2
    for i, path in enumerate(files):  # every saved state: one byte flipped, or cut in half
        data = bytearray(path.read_bytes())
        if i % 2 == 0:
            data[len(data) * 3 // 4] ^= 0xFF
        path.write_bytes(bytes(data if i % 2 == 0 else data[:len(data) // 2]))
    async with served(config_for(data_dir, cache_dir)) as restarted:
        async with aiohttp.ClientSession(base_url=str(restarted.make_url("/"))) as http:
            again = [await complete(http, prompt) for prompt in prompts]
            stats = await prefix_state_stats(http)
    assert [text for text, _ in again] == [text for text, _ in cold]  # the cold answer
    assert all(cached < MIN_TOKENS for _, cached in again)  # nothing restored from the damaged states
    assert stats["rejected"] >= 2 and stats["restored"] == 0


@pytest.mark.integration
async def test_a_sqlite_error_in_the_prefix_state_store_fails_no_request(server, cache_dir: Path):
    errors_before = (await prefix_state_stats(server))["errors"]
    database = sqlite3.connect(cache_dir / "kv" / "cache.db", timeout=30)
    database.execute("ALTER TABLE Cache RENAME TO Cache_gone")  # every query of the store now fails
    database.commit()
    try:
        await asyncio.sleep(5.5)  # past the index refresh interval: the next admission refreshes
        running = asyncio.create_task(complete(server, "Once upon a time", max_tokens=40))
        results = [await complete(server, f"Count to {n}:", max_tokens=4) for n in range(3)]
        text, _ = await running
        assert text and all(t for t, _ in results)
        for _ in range(100):
            if (await prefix_state_stats(server))["errors"] > errors_before:
                break
            await asyncio.sleep(0.1)
        assert (await prefix_state_stats(server))["errors"] > errors_before  # the error happened, and was survived
    finally:
        database.execute("ALTER TABLE Cache_gone RENAME TO Cache")
        database.commit()
        database.close()
    assert (await complete(server, "The sky is"))[0]


# -- the store alone (real diskcache, no model) --------------------------------------------

def store_at(directory: Path, **changes) -> PrefixStateDiskStore:
    return PrefixStateDiskStore(PrefixStateConfig(directory, namespace="model-x|ctx", min_tokens=4, **changes))


def test_eviction_takes_an_entry_and_its_index_together(tmp_path: Path):
    """diskcache culls least-recently-used rows in batches; whatever it culls, a process that
    opens the directory afterwards indexes only entries whose state loads."""
    limit = 3_500_000
    store = store_at(tmp_path, size_limit_bytes=limit)
    prompts = [list(range(100 * i, 100 * i + 16)) for i in range(1, 8)]
    for prompt in prompts:
        store.save(prompt, os.urandom(2**20))
        store.flush()
    store.close()
    reopened = store_at(tmp_path, size_limit_bytes=limit)
    found = [reopened.longest(prompt + [1]) for prompt in prompts]
    assert any(found)
    for match in filter(None, found):
        assert reopened.load(match[0]) is not None, "an indexed entry whose state was evicted"
    reopened.close()


def test_an_evicted_state_does_not_hide_a_valid_shorter_one(tmp_path: Path):
    store = store_at(tmp_path)
    short, long = list(range(1, 9)), list(range(1, 17))
    store.save(short, b"short-state")
    store.save(long, b"long-state")
    store.flush()
    long_key, shared = store.longest(long + [99])
    assert shared == 16
    with diskcache.Cache(str(tmp_path)) as other:  # evicted or cleared by another process
        assert other.delete(long_key)
    assert store.load(long_key) is None
    key, shared = store.longest(long + [99])  # the stale entry left the index: the next best
    assert shared == 8 and store.load(key) == b"short-state"
    store.close()


def test_the_write_queue_is_bounded_and_never_blocks(tmp_path: Path):
    store = store_at(tmp_path)
    gate = threading.Event()
    store._writer.submit(gate.wait)  # the disk is stuck
    prompts = [[n] * 8 for n in range(1, 6)]
    for prompt in prompts:  # returns at once however stuck the writer is
        if not store.covers(prompt):
            store.save(prompt, b"\0" * 2**20)
    assert store.stats()["pending"] == prefix_states.MAX_PENDING_WRITES
    assert store.stats()["dropped"] == len(prompts) - prefix_states.MAX_PENDING_WRITES
    gate.set()
    store.flush()
    assert store.stats()["saved"] == prefix_states.MAX_PENDING_WRITES and store.stats()["pending"] == 0
    store.close()


def test_a_cache_row_pointing_outside_the_directory_is_neither_read_nor_deleted(tmp_path: Path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not the cache's")
    cache = ResponseCache(ResponseCacheConfig(tmp_path / "responses"))
    cache.put("k", [], "m")
    cache.close()
    database = sqlite3.connect(tmp_path / "responses" / "cache.db")
    database.execute("UPDATE Cache SET mode = 2, filename = ?, value = NULL WHERE key = 'k'", (str(outside),))
    database.commit()
    database.close()
    cache = ResponseCache(ResponseCacheConfig(tmp_path / "responses"))
    assert cache.get("k") is None
    assert cache.clear() == 1
    cache.close()
    assert outside.read_text() == "not the cache's"


def test_a_planted_text_row_under_a_prefix_key_is_rejected_not_fatal_to_the_index(tmp_path: Path):
    """A str or number row under one of our keys is refused like any foreign entry; before,
    it failed the index scan (at open: the store switched itself off for good)."""
    store = store_at(tmp_path)
    store.save(list(range(1, 9)), b"state")
    store.flush()
    with diskcache.Cache(str(tmp_path)) as other:  # a writer of the directory plants rows
        other.set(store._prefix + "planted-text", "not sealed bytes")
        other.set(store._prefix + "planted-number", 7)
    reopened = store_at(tmp_path)
    reopened.flush()
    stats = reopened.stats()
    assert stats["active"] and stats["errors"] == 0 and stats["rejected"] == 2
    key, shared = reopened.longest(list(range(1, 9)) + [99])
    assert shared == 8 and reopened.load(key) == b"state"
    store.close()
    reopened.close()
