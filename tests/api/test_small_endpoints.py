"""GET /v1/models/{id}, llama-server's /tokenize, /detokenize and /apply-template, and the 404 of
an unknown /v1/ path, on the real app over a scripted backend."""
from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.api.fake_model import CHAR_BASE, NUM_VOCAB, api_config, api_server
from tests.api.test_http_surface import assert_openai_error
from tests.unit.fakes import BOS

KEY = "small-key"


async def test_retrieve_model_is_the_listed_entry_and_unknown_is_openai_404(http: aiohttp.ClientSession):
    listed = (await (await http.get("/v1/models")).json())["data"][0]
    response = await http.get(f"/v1/models/{listed['id']}")
    assert response.status == 200 and await response.json() == listed
    missing = await http.get("/v1/models/no-such-model")
    assert missing.status == 404
    error = assert_openai_error(await missing.json(), "model")
    assert error["code"] == "model_not_found" and "no-such-model" in error["message"]


async def test_tokenize_shapes(http: aiohttp.ClientSession):
    plain = await (await http.post("/tokenize", json={"content": "hi"})).json()
    assert plain == {"tokens": [CHAR_BASE + ord("h"), CHAR_BASE + ord("i")]}
    special = await (await http.post("/tokenize", json={"content": "hi", "add_special": True})).json()
    assert special["tokens"] == [BOS, *plain["tokens"]]
    pieces = await (await http.post("/tokenize", json={"content": "hi", "with_pieces": True})).json()
    assert pieces == {"tokens": [{"id": CHAR_BASE + ord("h"), "piece": "h"}, {"id": CHAR_BASE + ord("i"), "piece": "i"}]}
    assert await (await http.post("/tokenize", json={})).json() == {"tokens": []}  # as llama-server answers


async def test_detokenize_round_trip_and_vocabulary_check(http: aiohttp.ClientSession):
    tokens = (await (await http.post("/tokenize", json={"content": "hello"})).json())["tokens"]
    assert await (await http.post("/detokenize", json={"tokens": tokens})).json() == {"content": "hello"}
    for bad in ([NUM_VOCAB], [-1], ["1"], [1.5], "12", [True]):
        response = await http.post("/detokenize", json={"tokens": bad})
        assert response.status == 400, bad
        assert_openai_error(await response.json(), "tokens")


async def test_tokenize_and_detokenize_bounded_by_the_slot_context(http: aiohttp.ClientSession):
    slot_ctx = 1024 // 2  # api_config: ctx 1024, 2 slots
    for content in ("x" * (slot_ctx + 1), "x" * 100 * slot_ctx):  # just over; far over (refused early)
        response = await http.post("/tokenize", json={"content": content})
        assert response.status == 400
        assert_openai_error(await response.json(), "content")
    for tokens in ([CHAR_BASE + ord("x")] * (slot_ctx + 1), ["x"] * 100 * slot_ctx):  # the count before the entries
        response = await http.post("/detokenize", json={"tokens": tokens})
        assert response.status == 400
        assert "at most 512" in assert_openai_error(await response.json(), "tokens")["message"]
    for body in ({"content": 5}, {"content": "x", "with_pieces": "yes"}):
        assert (await http.post("/tokenize", json=body)).status == 400


async def test_apply_template_renders_without_generating(http: aiohttp.ClientSession):
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}
    response = await http.post("/apply-template", json=body)
    assert response.status == 200
    assert await response.json() == {"prompt": "<system>Be brief.\n<user>hi\n<assistant>"}
    bad = await http.post("/apply-template", json={"messages": []})
    assert bad.status == 400
    assert_openai_error(await bad.json(), "messages")


async def test_unknown_v1_path_lists_the_endpoints(http: aiohttp.ClientSession):
    response = await http.post("/v1/chat/complete", json={})
    assert response.status == 404
    error = assert_openai_error(await response.json())
    assert "/v1/chat/complete" in error["message"]
    for endpoint in ("POST /v1/chat/completions", "GET /v1/models", "GET /v1/models/{model_id}"):
        assert endpoint in error["message"]
    assert "HEAD" not in error["message"]
    other = await http.get("/nowhere")  # outside /v1/: aiohttp's plain 404, in OpenAI's shape
    assert other.status == 404 and "endpoints" not in (await other.json())["error"]["message"]


async def test_auth_covers_the_small_endpoints(tmp_path: Path):
    async with api_server(api_config(tmp_path, api_key=KEY)) as server:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
            calls = [("POST", "/tokenize", {"content": "hi"}), ("POST", "/detokenize", {"tokens": [1000]}),
                     ("POST", "/apply-template", {"messages": [{"role": "user", "content": "hi"}]}),
                     ("GET", "/v1/models/scripted", None), ("POST", "/v1/no-such-endpoint", {})]
            for method, path, body in calls:
                refused = await http.request(method, path, json=body)
                assert refused.status == 401, path
                assert_openai_error(await refused.json())
                allowed = await http.request(method, path, json=body, headers={"Authorization": f"Bearer {KEY}"})
                assert allowed.status == (404 if "no-such" in path else 200), path
