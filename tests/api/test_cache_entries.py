"""The response cache directory is untrusted (DESIGN.md, Trust): a well-sealed entry whose
contents do not fit the request (a choice index past n, wrong types, a token id outside the
vocabulary, which llama.cpp would be asked to render) is a miss, not a 500 or a crash."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import aiohttp
import diskcache
import pytest

from localllm.cache.response_cache import KIND
from localllm.cache.sealed import seal, unseal
from tests.api.fake_model import REPLY, api_config, api_server

BODY = {"prompt": "x", "temperature": 0, "logprobs": 1}


def rewrite_entries(directory: Path, change) -> int:
    """Re-seals every stored answer after `change(rows)`: what anyone who can write the
    cache directory can do (the seal is a checksum, not a secret)."""
    database = sqlite3.connect(directory / "cache.db")
    keys = [key for (key,) in database.execute("SELECT key FROM Cache WHERE raw = 1 AND typeof(key) = 'text'")]
    database.close()
    with diskcache.Cache(str(directory)) as cache:
        for key in keys:
            rows = json.loads(unseal(cache.get(key, read=False), KIND, key, 2**20))
            cache.set(key, seal(KIND, key, json.dumps(change(rows)).encode()))
    return len(keys)


def index_past_n(rows: list) -> list:
    return [[7, *row[1:]] for row in rows]


def text_not_a_string(rows: list) -> list:
    return [[row[0], {"a": 1}, *row[2:]] for row in rows]


def logprob_token_not_an_int(rows: list) -> list:
    return [[*row[:6], [["x", -0.5, []]]] for row in rows]


def logprob_token_outside_the_vocabulary(rows: list) -> list:
    return [[*row[:6], [[10**9, -0.5, [[10**9 + 1, -1.0]]]]] for row in rows]


@pytest.mark.parametrize("change", [index_past_n, text_not_a_string, logprob_token_not_an_int,
                                    logprob_token_outside_the_vocabulary])
@pytest.mark.parametrize("stream", [False, True])
async def test_an_entry_that_does_not_fit_the_request_is_a_miss(tmp_path: Path, change, stream: bool):
    config = api_config(tmp_path, cache_enabled=True, cache_dir=str(tmp_path / "cache"))
    async with api_server(config) as server, aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        first = await http.post("/v1/completions", json=BODY)
        assert first.status == 200 and first.headers["X-LocalLLM-Cache"] == "miss"
        assert rewrite_entries(tmp_path / "cache" / "responses", change) == 1
        again = await http.post("/v1/completions", json={**BODY, "stream": stream})  # stream: same key
        text = await again.text()
        assert again.status == 200, text
        assert again.headers["X-LocalLLM-Cache"] == "miss"
        assert "error" not in text and all(c in text for c in REPLY)
        third = await http.post("/v1/completions", json=BODY)  # the miss stored a good answer again
        assert third.headers["X-LocalLLM-Cache"] == "hit"
        assert (await third.json())["choices"][0]["text"] == REPLY
