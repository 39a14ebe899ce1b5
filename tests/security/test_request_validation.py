"""Hostile request bodies get a 400 in OpenAI's error shape, never a 500 (issue 14, items 7, 24, 25, 26)."""
from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from localllm.config import Config
from localllm.chat.template import MAX_CHAT_MESSAGES
from tests.serving import served

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
COMPLETION = {"prompt": "Once upon a time", "max_tokens": 1, "temperature": 0}


@pytest.fixture(scope="module")
async def http(data_dir: Path, model_path: Path):
    config = Config.from_flat({"parallel": 2, "ctx": 4096, "threads": 2, "data_dir": str(data_dir)})
    async with served(config) as server:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as session:
            yield session


async def error_of(response: aiohttp.ClientResponse, status: int = 400) -> dict:
    payload = await response.json()
    assert response.status == status, payload
    assert set(payload["error"]) == {"message", "type", "param", "code"} and payload["error"]["message"]
    return payload["error"]


async def still_serves(http: aiohttp.ClientSession) -> None:
    response = await http.post("/v1/chat/completions", json=CHAT)
    assert response.status == 200, await response.text()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
async def test_deeply_nested_bodies_are_400(http, path: str):
    for depth in (100, 100_000):  # past our bound; past Python's recursion limit
        raw = '{"model": null, "x": ' + "[" * depth + "]" * depth + "}"
        error = await error_of(await http.post(path, data=raw, headers=JSON))
        assert "nested" in error["message"]
    await still_serves(http)


async def test_lone_surrogates_are_400_everywhere(http):
    surrogate = "\\ud800"  # valid JSON escape, not encodable text
    cases = [
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "a%sb"}]}', "messages"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": [{"type": "text", "text": "%s"}]}]}',
         "messages"),
        ("/v1/completions", '{"prompt": ["ok", "ok", "%s"], "max_tokens": 1}', "prompt"),
        ("/v1/embeddings", '{"input": "x%s"}', "input"),
        ("/v1/embeddings", '{"input": ["fine", "%s"]}', "input"),
        ("/v1/completions", '{"prompt": "x", "stop": ["%s"]}', "stop"),
        ("/v1/chat/completions", '{"model": "%s", "messages": []}', "model"),
    ]
    for path, template, param in cases:
        error = await error_of(await http.post(path, data=template % surrogate, headers=JSON))
        assert error["param"] == param, (template, error)
    await still_serves(http)


@pytest.mark.parametrize("param", ["temperature", "top_p", "min_p", "repeat_penalty", "frequency_penalty",
                                   "presence_penalty"])
async def test_non_finite_sampling_numbers_are_400(http, param: str):
    for literal in ("Infinity", "-Infinity", "NaN", "1e999", "1" + "0" * 400):
        raw = json.dumps(COMPLETION)[:-1] + f', "{param}": {literal}}}'
        error = await error_of(await http.post("/v1/completions", data=raw, headers=JSON))
        assert error["param"] == param, (literal, error)


async def test_top_k_above_the_vocabulary_is_400_naming_its_size(http):
    for top_k in (262_145, 2**31, 10**30):
        error = await error_of(await http.post("/v1/completions", json={**COMPLETION, "top_k": top_k}))
        assert error["param"] == "top_k" and "262144" in error["message"]
    response = await http.post("/v1/completions", json={**COMPLETION, "top_k": 262_144})
    assert response.status == 200  # the whole vocabulary is a valid top_k


async def test_bad_logit_bias_is_400(http):
    nested = {"1": [[[[[1]]]]]}
    for bias in (nested, {"1": {"2": 3}}, {"1_0": 1}, {" 7": 1}, {"1" * 5000: 1}, {"99999999999": 1},
                 {"1": 1e300}, {"1": True}, ["1", 2]):
        error = await error_of(await http.post("/v1/completions", json={**COMPLETION, "logit_bias": bias}))
        assert error["param"] == "logit_bias", (bias, error)
    raw = json.dumps(COMPLETION)[:-1] + ', "logit_bias": {"1": NaN}}'
    assert (await error_of(await http.post("/v1/completions", data=raw, headers=JSON)))["param"] == "logit_bias"
    await still_serves(http)


async def test_absurd_model_names_are_refused_without_touching_files(http):
    for name in ("m" * 10_000, "a/" * 3000, "gemma\x00../../etc/passwd", "x\n"):
        for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION),
                           ("/v1/embeddings", {"input": "x"})):
            response = await http.post(path, json={**body, "model": name})
            payload = await response.json()
            assert response.status in (400, 404), payload
            assert payload["error"]["param"] == "model" and "too long" not in payload["error"]["message"]
    response = await http.get("/v1/stats", params={"model": "m" * 10_000})
    assert response.status in (400, 404)


async def test_n_zero_and_messages_without_content_are_400(http):
    assert (await error_of(await http.post("/v1/chat/completions", json={**CHAT, "n": 0})))["param"] == "n"
    assert (await error_of(await http.post("/v1/completions", json={**COMPLETION, "n": 0})))["param"] == "n"
    for message in ({"role": "user"}, {"role": "user", "content": None}, {"role": "system"},
                    {"role": "assistant", "content": None}):
        body = {**CHAT, "messages": [{"role": "user", "content": "Hi"}, message]}
        error = await error_of(await http.post("/v1/chat/completions", json=body))
        assert error["param"] == "messages" and "content" in error["message"], message
    response = await http.post("/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": ""}]})
    assert response.status == 200  # an empty string is content


async def test_too_many_messages_are_refused_by_count(http):
    many = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(20_001)]
    error = await error_of(await http.post("/v1/chat/completions", json={**CHAT, "messages": many}))
    assert error["param"] == "messages" and str(MAX_CHAT_MESSAGES) in error["message"]
    # At the bound the messages are rendered and tokenised, and refused for the context instead.
    error = await error_of(await http.post("/v1/chat/completions",
                                           json={**CHAT, "messages": many[:MAX_CHAT_MESSAGES - 1]}))
    assert error["param"] == "messages" and "tokens" in error["message"]
    await still_serves(http)


async def test_long_prompts_full_of_line_breaks_are_refused(http):
    """llama.cpp's tokenizer is quadratic in line breaks (user-defined tokens in Gemma's
    vocabulary): such a prompt far over the context is refused without tokenising all of it."""
    for body, path in (({**COMPLETION, "prompt": "word\n" * 200_000}, "/v1/completions"),
                       ({**CHAT, "messages": [{"role": "user", "content": "word\n" * 200_000}]},
                        "/v1/chat/completions"),
                       ({"input": "word\n" * 100_000}, "/v1/embeddings")):
        error = await error_of(await http.post(path, json=body))
        assert "tokens" in error["message"], error
    await still_serves(http)
