"""Issue 14 item 15: with several keys, one key cannot read another's cached answers or probe its
prompts through prefix reuse (`cached_tokens`), in memory or on disk; `cache_salt` narrows a
namespace further; the operator can share on purpose; without keys everything is shared.
"""
from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from localllm.cache.prefix_states import PrefixStateConfig, PrefixStateDiskStore
from localllm.config import Config
from localllm.engine.request import Request
from localllm.engine.slots import KvCopy, SlotTable
from localllm.compose import load_model
from localllm.types import SamplingParams
from tests.serving import serving

pytestmark = pytest.mark.integration
ALICE = {"Authorization": "Bearer alice-secret"}
BOB = {"Authorization": "Bearer bob-secret"}
NO_RESPONSE_CACHE = {"X-LocalLLM-Cache": "off"}
SECRET_PROMPT = ("Internal memo for the finance team only. The acquisition of the northern plant closes "
                 "on the first of March; the agreed price is forty-two million. Do not share this. ") * 3


def config(data_dir: Path, key_file: Path, **extra: object) -> Config:
    return Config.from_flat({"parallel": 2, "ctx": 2048, "threads": 2, "data_dir": str(data_dir),
                             "api_key_file": str(key_file), **extra})


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text("alice:alice-secret\nbob:bob-secret\n")
    return path


@pytest.fixture(scope="module")
async def loaded(data_dir: Path, model_path: Path, key_file: Path):
    model = await load_model(config(data_dir, key_file))
    yield model
    await model.engine.stop()


async def complete(http: aiohttp.ClientSession, headers: dict, prompt: str, **extra: object) -> tuple[str, dict]:
    body = {"prompt": prompt, "max_tokens": 2, "temperature": 0, **extra}
    response = await http.post("/v1/completions", json=body, headers=headers)
    assert response.status == 200, await response.text()
    return response.headers["X-LocalLLM-Cache"], (await response.json())["usage"]


def cached(usage: dict) -> int:
    return usage["prompt_tokens_details"]["cached_tokens"]


async def test_prefix_reuse_stays_within_a_key(loaded, data_dir: Path, key_file: Path):
    async with serving(config(data_dir, key_file), loaded) as server:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
            await complete(http, {**ALICE, **NO_RESPONSE_CACHE}, SECRET_PROMPT)
            _, bob = await complete(http, {**BOB, **NO_RESPONSE_CACHE}, SECRET_PROMPT + " Summary:")
            assert cached(bob) == 0  # no oracle on alice's prompt
            _, alice = await complete(http, {**ALICE, **NO_RESPONSE_CACHE}, SECRET_PROMPT + " Summary:")
            assert cached(alice) > 50  # her own prefix is reused
            _, salted = await complete(http, {**ALICE, **NO_RESPONSE_CACHE}, SECRET_PROMPT + " Summary:",
                                       cache_salt="project-x")
            assert cached(salted) == 0


async def test_response_cache_answers_only_the_key_that_stored_it(loaded, data_dir: Path, key_file: Path):
    prompt = "The three primary colours are"
    async with serving(config(data_dir, key_file), loaded) as server:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
            assert (await complete(http, ALICE, prompt))[0] == "miss"
            assert (await complete(http, ALICE, prompt))[0] == "hit"
            assert (await complete(http, BOB, prompt))[0] == "miss"
            assert (await complete(http, BOB, prompt))[0] == "hit"  # bob's own entry
            assert (await complete(http, ALICE, prompt, cache_salt="s1"))[0] == "miss"
            bad = await http.post("/v1/completions", json={"prompt": prompt, "cache_salt": 7}, headers=ALICE)
            assert bad.status == 400 and (await bad.json())["error"]["param"] == "cache_salt"


async def test_the_operator_can_share_caches_across_keys(loaded, data_dir: Path, key_file: Path):
    prompt = "A short list of fruits:"
    shared = config(data_dir, key_file, share_cache_across_keys=True)
    async with serving(shared, loaded) as server:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
            assert (await complete(http, ALICE, prompt))[0] == "miss"
            assert (await complete(http, BOB, prompt))[0] == "hit"
            await complete(http, {**ALICE, **NO_RESPONSE_CACHE}, SECRET_PROMPT + " Note:")
            _, bob = await complete(http, {**BOB, **NO_RESPONSE_CACHE}, SECRET_PROMPT + " Note: the")
            assert cached(bob) > 50


async def test_without_keys_everything_is_shared(loaded, data_dir: Path):
    single = Config.from_flat({"parallel": 2, "ctx": 2048, "threads": 2, "data_dir": str(data_dir)})
    async with serving(single, loaded) as server:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
            await complete(http, NO_RESPONSE_CACHE, SECRET_PROMPT + " Draft:")
            _, again = await complete(http, NO_RESPONSE_CACHE, SECRET_PROMPT + " Draft: a")
            assert cached(again) > 50


def test_slots_reuse_only_their_own_namespace():
    table = SlotTable(2)
    prompt = list(range(100, 200))
    first = Request("a", prompt, SamplingParams(), 8, cache_namespace="alice")
    table.assign(first)
    first.slot_id, first.num_computed_tokens = 0, len(prompt)
    table.slots[0].cached_token_ids = list(prompt)
    table.release(0)
    _, ops, reused = table.assign(Request("b", prompt + [5], SamplingParams(), 8, cache_namespace="bob"))
    assert reused == 0 and not any(isinstance(op, KvCopy) for op in ops)
    _, _, reused = table.assign(Request("c", prompt + [5], SamplingParams(), 8, cache_namespace="alice"))
    assert reused == len(prompt)


def test_saved_prefix_states_are_namespaced_on_disk(tmp_path: Path):
    store_config = PrefixStateConfig(tmp_path / "kv", namespace="model-x|fmt", min_tokens=4)
    store = PrefixStateDiskStore(store_config)
    prompt = list(range(10, 40))
    store.save(prompt, b"alice-state", "alice-ns")
    store.flush()
    assert store.longest(prompt + [1], "bob-ns") is None
    assert store.longest(prompt + [1]) is None  # the shared namespace is another namespace
    store.close()
    reopened = PrefixStateDiskStore(store_config)  # read back from disk: the namespace survives
    assert reopened.longest(prompt + [1], "bob-ns") is None
    key, shared = reopened.longest(prompt + [1], "alice-ns")
    assert shared == len(prompt) and reopened.load(key) == b"alice-state"
    reopened.close()
