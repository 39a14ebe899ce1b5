"""/v1/responses over a scripted backend: wire shapes, the named-event SSE framing, the
conversation a follow-up continues, the store's bounds, and the request log's protocol."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import aiohttp
import pytest

from localllm.server import responses_store
from localllm.server.responses_store import RESPONSE_STORE_KEY
from localllm.server.tenants import SHARED
from tests.api.fake_model import REPLY, api_config, api_server
from tests.api.test_http_surface import assert_openai_error


def read_named_events(raw: str) -> list[dict]:
    """Every event of a Responses stream; asserts each is `event: TYPE` + `data: {..., "type": TYPE}`."""
    assert raw.endswith("\n\n") and "[DONE]" not in raw
    events = []
    for block in raw.split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        payload = json.loads(data_line.removeprefix("data: "))
        assert name_line == f"event: {payload['type']}"
        events.append(payload)
    return events


async def test_plain_response_shape_and_log_protocol(http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="localllm.requests")
    response = await http.post("/v1/responses", json={"input": "hi", "metadata": {"run": "1"}})
    assert response.status == 200 and response.headers["X-LocalLLM-Cache"] in ("miss", "bypass")
    body = await response.json()
    assert body["object"] == "response" and body["status"] == "completed" and body["metadata"] == {"run": "1"}
    message = body["output"][0]
    assert message["type"] == "message" and message["content"][0]["text"] == REPLY
    usage = body["usage"]
    assert usage["output_tokens"] == len(REPLY) + 1  # the end-of-generation token counts too
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    lines = [r.getMessage() for r in caplog.records if r.name == "localllm.requests"]
    assert any("path=/v1/responses" in line and "protocol=openai.responses" in line for line in lines)


async def test_stream_framing_and_follow_up_sees_the_whole_conversation(http: aiohttp.ClientSession):
    first = await http.post("/v1/responses", json={"input": "hi", "stream": True})
    assert first.headers["Content-Type"].startswith("text/event-stream")
    events = read_named_events(await first.text())
    assert events[-1]["type"] == "response.completed"
    response_id = events[-1]["response"]["id"]
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == REPLY
    follow = await (await http.post("/v1/responses", json={"previous_response_id": response_id, "input": "more"})).json()
    prompt = (await (await http.post("/apply-template", json={"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": REPLY},
        {"role": "user", "content": "more"}]})).json())["prompt"]
    assert follow["usage"]["input_tokens"] == len(prompt)  # the scripted tokenizer: one token per character
    stored = await (await http.get(f"/v1/responses/{response_id}")).json()
    assert stored == events[-1]["response"]


async def test_unknown_previous_response_and_missing_input(http: aiohttp.ClientSession):
    response = await http.post("/v1/responses", json={"previous_response_id": "resp_nope", "input": "x"})
    assert response.status == 404
    assert assert_openai_error(await response.json(), "previous_response_id")["code"] == "previous_response_not_found"
    response = await http.post("/v1/responses", json={"model": "scripted"})
    assert response.status == 400
    assert_openai_error(await response.json(), "input")
    missing = await http.get("/v1/responses/resp_nope")
    assert missing.status == 404 and (await http.delete("/v1/responses/resp_nope")).status == 404


async def test_store_false_and_store_off_keep_nothing(tmp_path: Path):
    async with api_server(api_config(tmp_path, responses_store_size_mib=0)) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        created = await (await http.post("/v1/responses", json={"input": "hi"})).json()
        assert (await http.get(f"/v1/responses/{created['id']}")).status == 404
    async with api_server(api_config(tmp_path / "on")) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        created = await (await http.post("/v1/responses", json={"input": "hi", "store": False})).json()
        assert created["store"] is False and (await http.get(f"/v1/responses/{created['id']}")).status == 404


async def test_every_responses_request_names_the_protocol(http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture):
    """Also one refused before the chat path, and the token count (neither reaches open_chat)."""
    caplog.set_level(logging.INFO, logger="localllm.requests")
    for body in ({"input": "hi", "max_output_tokens": 0}, {"input": 5}):
        assert (await http.post("/v1/responses", json=body)).status == 400
    assert (await http.post("/v1/responses/input_tokens", json={"input": "hi"})).status == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "localllm.requests" and "path=/v1/" in r.getMessage()]
    assert [line.split(" protocol=")[1].split(" ")[0] for line in lines] == ["openai.responses"] * 3


async def _chain(http: aiohttp.ClientSession, inputs: list[str], headers: dict | None = None) -> list[dict]:
    """One response per input, each continuing the one before."""
    chain: list[dict] = []
    for text in inputs:
        body = {"input": text, **({"previous_response_id": chain[-1]["id"]} if chain else {})}
        response = await http.post("/v1/responses", json=body, headers=headers)
        assert response.status == 200
        chain.append(await response.json())
    return chain


async def test_each_stored_entry_is_one_turn_and_the_chain_rebuilds_the_conversation(tmp_path: Path):
    """A follow-up stores its own input and output only (not the whole conversation again), and
    the next follow-up still sees every turn."""
    async with api_server(api_config(tmp_path)) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        chain = await _chain(http, ["one", "two", "three"])
        store = server.app[RESPONSE_STORE_KEY]
        for number, (text, response) in enumerate(zip(["one", "two", "three"], chain)):
            entry = store.get(SHARED, response["id"])
            assert entry.items == [{"type": "message", "role": "user", "content": text}, *response["output"]]
            assert entry.previous_id == (chain[number - 1]["id"] if number else None)
        assert (await (await http.get(f"/v1/responses/{chain[1]['id']}")).json()) == chain[1]
        follow = await (await http.post("/v1/responses", json={"previous_response_id": chain[-1]["id"],
                                                                "input": "four"})).json()
        messages = [{"role": "user", "content": text} if i % 2 == 0 else {"role": "assistant", "content": REPLY}
                    for i, text in enumerate(["one", "", "two", "", "three", "", "four"])]
        prompt = (await (await http.post("/apply-template", json={"messages": messages})).json())["prompt"]
        assert follow["usage"]["input_tokens"] == len(prompt)  # one token per character


async def test_a_response_lost_mid_chain_makes_the_follow_up_a_404(http: aiohttp.ClientSession):
    """Never a silently shortened conversation: the chain's middle deleted, its end is unknown."""
    chain = await _chain(http, ["one", "two", "three"])
    assert (await http.delete(f"/v1/responses/{chain[1]['id']}")).status == 200
    response = await http.post("/v1/responses", json={"previous_response_id": chain[-1]["id"], "input": "x"})
    assert response.status == 404
    assert assert_openai_error(await response.json(), "previous_response_id")["code"] == "previous_response_not_found"
    assert (await http.get(f"/v1/responses/{chain[-1]['id']}")).status == 200  # still readable by itself


async def test_a_chain_past_its_bound_is_a_400(http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(responses_store, "MAX_CHAIN_TURNS", 3)
    chain = await _chain(http, ["one", "two", "three", "four"])
    assert (await http.post("/v1/responses", json={"previous_response_id": chain[2]["id"], "input": "x"})).status == 200
    response = await http.post("/v1/responses", json={"previous_response_id": chain[-1]["id"], "input": "x"})
    assert response.status == 400 and "3 responses" in assert_openai_error(await response.json(),
                                                                            "previous_response_id")["message"]


async def test_one_key_past_its_bound_drops_its_own_oldest_not_another_keys(tmp_path: Path):
    config = api_config(tmp_path, api_key="k", admin_api_key="a", responses_store_max_per_key=2)
    async with api_server(config) as server, aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        busy, quiet = {"Authorization": "Bearer k"}, {"Authorization": "Bearer a"}
        kept = [await (await http.post("/v1/responses", json={"input": "q"}, headers=quiet)).json() for _ in range(2)]
        pushed = [await (await http.post("/v1/responses", json={"input": "b"}, headers=busy)).json() for _ in range(5)]
        for response in kept:
            assert (await http.get(f"/v1/responses/{response['id']}", headers=quiet)).status == 200
        found = [(await http.get(f"/v1/responses/{response['id']}", headers=busy)).status for response in pushed]
        assert found == [404, 404, 404, 200, 200]
