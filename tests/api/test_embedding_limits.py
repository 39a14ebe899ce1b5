"""Issue 14: one /v1/embeddings call is bounded in total tokens (not only in inputs and tokens per
input), and its tokens count against a key's per-minute token limit before any embedding work."""
from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from localllm.server.openai_routes import MAX_EMBEDDING_INPUTS, MAX_EMBEDDING_TOKENS_PER_REQUEST
from tests.api.fake_model import ScriptedBackend, api_config, api_server

LONG_INPUT_CHARS = 1999
"""One token per character plus BOS: 2,000 tokens an input, like a long chunk for a real model."""


@pytest.fixture
def embed_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Inputs per backend embed() call; the scripted model takes inputs as long as a real one's."""
    calls: list[int] = []
    original = ScriptedBackend.embed

    def counting(self: ScriptedBackend, inputs) -> list:
        calls.append(len(inputs))
        return original(self, inputs)

    monkeypatch.setattr(ScriptedBackend, "embed", counting)
    monkeypatch.setattr(ScriptedBackend, "max_embedding_tokens", 2048)
    return calls


async def test_total_tokens_per_call_are_capped_before_any_embedding(http: aiohttp.ClientSession,
                                                                    embed_calls: list[int]):
    per_input = LONG_INPUT_CHARS + 1
    fits = MAX_EMBEDDING_TOKENS_PER_REQUEST // per_input
    assert fits + 1 < MAX_EMBEDDING_INPUTS  # the input count alone would let the big call through
    ok = await http.post("/v1/embeddings", json={"input": ["x" * LONG_INPUT_CHARS] * fits})
    assert ok.status == 200, await ok.text()
    assert (await ok.json())["usage"]["prompt_tokens"] == fits * per_input
    assert embed_calls == [fits]
    too_many = await http.post("/v1/embeddings", json={"input": ["x" * LONG_INPUT_CHARS] * (fits + 1)})
    assert too_many.status == 400
    error = (await too_many.json())["error"]
    assert error["param"] == "input" and str(MAX_EMBEDDING_TOKENS_PER_REQUEST) in error["message"]
    as_token_ids = await http.post("/v1/embeddings", json={"input": [[1000 + 120] * per_input] * (fits + 1)})
    assert as_token_ids.status == 400 and (await as_token_ids.json())["error"]["param"] == "input"
    assert embed_calls == [fits]  # the refused calls never reached the model


async def test_embedding_tokens_are_reserved_against_tokens_per_minute(tmp_path: Path, embed_calls: list[int]):
    key = {"Authorization": "Bearer k"}
    async with api_server(api_config(tmp_path, api_key="k", rate_limit_tpm=100)) as server:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
            over = await http.post("/v1/embeddings", json={"input": ["x" * 50] * 3}, headers=key)  # 153 tokens
            assert over.status == 429 and "Retry-After" in over.headers
            assert (await over.json())["error"]["code"] == "rate_limit_exceeded"
            assert embed_calls == []  # refused before the model did the work
            for _ in range(2):  # 42 tokens each: both fit in 100
                ok = await http.post("/v1/embeddings", json={"input": ["x" * 20] * 2}, headers=key)
                assert ok.status == 200, await ok.text()
            assert ok.headers["x-ratelimit-remaining-tokens"] == str(100 - 84)
            third = await http.post("/v1/embeddings", json={"input": ["x" * 20] * 2}, headers=key)
            assert third.status == 429
            assert embed_calls == [2, 2]
