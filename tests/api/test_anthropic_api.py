"""Anthropic's Messages API over the scripted backend: wire shapes, SSE events, errors in
Anthropic's shape, and x-api-key auth, in seconds and without llama.cpp."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from localllm.compose import start_served
from tests.api.fake_model import REPLY, ScriptedBackend, api_config, api_server
from tests.serving import serving


async def test_x_api_key_is_a_key_header_everywhere_and_auth_stays_closed(tmp_path: Path):
    """Anthropic's clients send `x-api-key`: it works wherever a Bearer key does; with both headers
    both must name the same key; a wrong or empty one is a 401."""
    async with api_server(api_config(tmp_path, api_key="k", admin_api_key="a")) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        right = await http.post("/v1/completions", json={"prompt": "x"}, headers={"x-api-key": "k"})
        assert right.status == 200 and (await right.json())["choices"][0]["text"] == REPLY
        assert (await http.get("/v1/models", headers={"x-api-key": " k "})).status == 200
        for headers in ({"x-api-key": "nope"}, {"x-api-key": ""}, {"x-api-key": "Bearer k"},
                        {"x-api-key": "nope", "Authorization": "Bearer k"},  # a wrong one is never outvoted
                        {"x-api-key": "k", "Authorization": "Bearer nope"},
                        {"x-api-key": "k", "Authorization": "Bearer a"}):  # two different keys
            wrong = await http.get("/v1/models", headers=headers)
            assert wrong.status == 401, headers
            assert (await wrong.json())["error"]["code"] == "invalid_api_key"
        both = await http.get("/v1/models", headers={"x-api-key": "k", "Authorization": "Bearer k"})
        assert both.status == 200
        for name, right, wrong in (("x-api-key", "k", "nope"), ("Authorization", "Bearer k", "Bearer nope")):
            for pair in ((right, wrong), (wrong, right)):  # a header sent twice: the first is not the only one read
                repeated = await http.get("/v1/models", headers=CIMultiDict((name, value) for value in pair))
                assert repeated.status == 401, (name, pair)
        # scopes hold whichever header carries the key
        admin = await http.post("/admin/models/load", json={"model": "scripted"}, headers={"x-api-key": "k"})
        assert admin.status == 403
        admin = await http.post("/admin/models/load", json={"model": "scripted"}, headers={"x-api-key": "a"})
        assert admin.status == 200


HELLO = {"model": "scripted", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}


def assert_anthropic_error(body: dict, kind: str) -> str:
    """Anthropic's error shape exactly; returns the message."""
    assert body["type"] == "error" and set(body) == {"type", "error"}, body
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == kind, body
    assert body["error"]["message"]
    return body["error"]["message"]


async def read_events(response: aiohttp.ClientResponse) -> list[tuple[str, dict]]:
    """Every event of a named-event SSE body; asserts the framing (`event:` then `data:`, blank line)."""
    raw = (await response.read()).decode()
    assert raw.endswith("\n\n") and "[DONE]" not in raw, raw[-40:]
    events = []
    for block in raw.split("\n\n")[:-1]:
        head, data = block.split("\n")
        assert head.startswith("event: ") and data.startswith("data: "), block
        events.append((head[len("event: "):], json.loads(data[len("data: "):])))
    return events


async def test_a_message_in_anthropics_shape(http: aiohttp.ClientSession):
    response = await http.post("/v1/messages", json=HELLO, headers={"anthropic-version": "2023-06-01"})
    body = await response.json()
    assert response.status == 200, body
    assert body["id"].startswith("msg_") and body["type"] == "message" and body["role"] == "assistant"
    assert body["model"] == "scripted" and body["content"] == [{"type": "text", "text": REPLY}]
    assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
    prompt = len("<user>hi\n<assistant>")  # the scripted tokenizer: one token per character
    assert body["usage"]["input_tokens"] + body["usage"]["cache_read_input_tokens"] == prompt
    assert body["usage"]["output_tokens"] == len(REPLY) + 1  # and the end-of-generation token
    assert response.headers["request-id"] == response.headers["X-Request-Id"]
    short = await (await http.post("/v1/messages", json={**HELLO, "max_tokens": 2})).json()
    assert short["content"] == [{"type": "text", "text": REPLY[:2]}] and short["stop_reason"] == "max_tokens"


async def test_a_streamed_message_sends_anthropics_events(http: aiohttp.ClientSession):
    response = await http.post("/v1/messages", json={**HELLO, "stream": True})
    assert response.status == 200 and response.content_type == "text/event-stream"
    events = await read_events(response)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(payload["type"] == name for name, payload in events)
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["stop_reason"] is None
    text = "".join(p["delta"]["text"] for n, p in events if n == "content_block_delta")
    assert text == REPLY
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == len(REPLY) + 1


async def test_a_stop_sequence_is_named_also_when_streamed_and_replayed_from_the_cache(tmp_path: Path):
    body = {**HELLO, "stop_sequences": ["x", "ll", "lo"]}  # REPLY is "Hello!": "ll" matches first
    async with api_server(api_config(tmp_path, cache_enabled=True)) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        answers = []
        for _ in range(2):  # a miss, then a hit replayed from the response cache
            response = await http.post("/v1/messages", json=body, headers={"X-LocalLLM-Cache": "on"})
            answers.append((response.headers["X-LocalLLM-Cache"], await response.json()))
        assert [cache for cache, _ in answers] == ["miss", "hit"]
        for _, answer in answers:
            assert answer["content"] == [{"type": "text", "text": "He"}]
            assert (answer["stop_reason"], answer["stop_sequence"]) == ("stop_sequence", "ll")
        events = await read_events(await http.post("/v1/messages", json={**body, "stream": True}))
        assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "ll"}
        plain = await (await http.post("/v1/messages", json={**HELLO, "stop_sequences": ["?"]})).json()
        assert (plain["stop_reason"], plain["stop_sequence"]) == ("end_turn", None)  # ended by end of generation


async def test_count_tokens_counts_the_rendered_prompt(http: aiohttp.ClientSession):
    body = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}  # no max_tokens needed
    plain = await http.post("/v1/messages/count_tokens", json=body)
    assert plain.status == 200 and await plain.json() == {"input_tokens": len("<user>hi\n<assistant>")}
    with_system = await http.post("/v1/messages/count_tokens", json={**body, "system": "Be brief."})
    assert await with_system.json() == {"input_tokens": len("<system>Be brief.\n<user>hi\n<assistant>")}


@pytest.mark.parametrize("change, status, kind, words", [
    ({"max_tokens": None}, 400, "invalid_request_error", "max_tokens: Field required"),
    ({"model": "missing-model"}, 404, "not_found_error", "missing-model"),  # the scripted loader knows no missing*
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}]}, 400,
     "invalid_request_error", "image blocks are not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, 400, "invalid_request_error", "video"),
    ({"temperature": "hot"}, 400, "invalid_request_error", "temperature"),
    ({"stream": "yes"}, 400, "invalid_request_error", "stream"),
])
async def test_bad_requests_answer_in_anthropics_error_shape(http: aiohttp.ClientSession, change: dict,
                                                               status: int, kind: str, words: str):
    body = {key: value for key, value in {**HELLO, **change}.items() if value is not None}
    response = await http.post("/v1/messages", json=body)
    assert response.status == status
    assert words in assert_anthropic_error(await response.json(), kind)


async def test_transport_errors_answer_in_anthropics_shape(http: aiohttp.ClientSession):
    as_text = await http.post("/v1/messages", data="{}", headers={"Content-Type": "text/plain"})
    assert as_text.status == 415 and assert_anthropic_error(await as_text.json(), "invalid_request_error")
    not_json = await http.post("/v1/messages", data="{", headers={"Content-Type": "application/json"})
    assert not_json.status == 400 and assert_anthropic_error(await not_json.json(), "invalid_request_error")
    unknown = await http.post("/v1/messages/batches", json=HELLO)
    assert unknown.status == 404 and assert_anthropic_error(await unknown.json(), "not_found_error")
    counted = await http.post("/v1/messages/count_tokens", json={"model": "scripted", "messages": []})
    assert counted.status == 400 and assert_anthropic_error(await counted.json(), "invalid_request_error")


async def test_keys_and_limits_apply_in_anthropics_shape(tmp_path: Path):
    config = api_config(tmp_path, api_key="k", rate_limit_rpm=1)
    async with api_server(config) as server, aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        anonymous = await http.post("/v1/messages", json=HELLO)
        assert anonymous.status == 401 and assert_anthropic_error(await anonymous.json(), "authentication_error")
        wrong = await http.post("/v1/messages", json=HELLO, headers={"x-api-key": "nope"})
        assert wrong.status == 401 and assert_anthropic_error(await wrong.json(), "authentication_error")
        right = await http.post("/v1/messages", json=HELLO, headers={"x-api-key": "k"})
        answer = await right.json()
        assert right.status == 200 and answer["content"][0]["text"] == REPLY
        assert right.headers["x-ratelimit-limit-requests"] == "1"
        limited = await http.post("/v1/messages", json=HELLO, headers={"x-api-key": "k"})
        assert limited.status == 429 and limited.headers["Retry-After"]
        assert_anthropic_error(await limited.json(), "rate_limit_error")
        stats = await (await http.get("/v1/stats", headers={"x-api-key": "k"})).json()
        used = answer["usage"]
        total = used["input_tokens"] + used["cache_read_input_tokens"] + used["output_tokens"]
        assert stats["keys"]["default"] == {"requests": 1, "rate_limited": 1, "tokens": total,
                                            "protocols": {"anthropic": {"requests": 1, "tokens": total}}}


async def test_the_log_line_and_metrics_name_the_protocol(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="localllm.requests")
    async with api_server(api_config(tmp_path)) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        for path, body in (("/v1/messages", HELLO), ("/v1/messages", {**HELLO, "stream": True}),
                           ("/v1/messages/count_tokens", HELLO), ("/v1/messages", {**HELLO, "max_tokens": None})):
            await (await http.post(path, json=body)).read()
        metrics = await (await http.get("/metrics")).text()
    lines = [r.getMessage() for r in caplog.records if r.name == "localllm.requests" and "path=/v1/" in r.getMessage()]
    assert [line.split(" protocol=")[1].split(" ")[0] for line in lines] == ["anthropic"] * 4
    assert 'localllm_requests_total{endpoint="anthropic",status="ok"} 2.0' in metrics


class FailingBackend(ScriptedBackend):
    """Answers two tokens, then every decode fails (the engine reports an error mid-answer)."""

    def __init__(self, num_ctx: int) -> None:
        super().__init__(num_ctx)
        self.num_decodes = 0

    def decode(self, chunks):
        self.num_decodes += 1
        if self.num_decodes > 2:
            raise RuntimeError("scripted decode failure")
        return super().decode(chunks)


async def test_an_engine_failure_mid_stream_is_an_error_event(tmp_path: Path):
    config = api_config(tmp_path)
    loaded = await start_served(FailingBackend(config.engine.ctx), config, name="scripted",
                                path=Path("/models/m.gguf"), spec=None, identity="scripted:fail",
                                started_s=time.monotonic())
    try:
        async with serving(config, loaded) as server, \
                aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
            response = await http.post("/v1/messages", json={**HELLO, "stream": True})
            events = await read_events(response)
            assert [n for n, _ in events][:3] == ["message_start", "ping", "content_block_start"]
            name, payload = events[-1]
            assert name == "error" and "message_stop" not in [n for n, _ in events]
            assert_anthropic_error(payload, "api_error")
    finally:
        await loaded.engine.stop()
