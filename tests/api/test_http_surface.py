"""The OpenAI HTTP surface of the real app over a scripted backend: shapes, SSE framing,
validation errors, 404s, auth and model admin, in seconds and without llama.cpp."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from localllm.config import Config
from localllm.server.app import create_app
from tests.api.fake_model import REPLY, api_config, api_server

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


async def read_sse(response: aiohttp.ClientResponse) -> list[dict | str]:
    """Every event of an SSE body; asserts the framing (`data: ` lines, blank line after each)."""
    raw = (await response.read()).decode()
    assert raw.endswith("\n\n"), raw[-20:]
    events: list[dict | str] = []
    for block in raw.split("\n\n")[:-1]:
        assert block.startswith("data: ") and "\n" not in block, block
        payload = block[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def assert_openai_error(body: dict, param: str | None = None) -> dict:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param
    return error


SERVE_ONE_REQUEST = """
import asyncio, sys, tempfile
from pathlib import Path
import aiohttp
from tests.api.fake_model import api_config, api_server

async def main():
    with tempfile.TemporaryDirectory() as tmp:
        async with api_server(api_config(Path(tmp))) as server, aiohttp.ClientSession() as http:
            response = await http.post(server.make_url("/v1/completions"), json={"prompt": "x"})
            print(response.status, "llama_cpp" in sys.modules)

asyncio.run(main())
"""


def test_the_tier_runs_without_llama_cpp():
    """The app, the engine and the composition root's wiring answer a request, and llama.cpp never loads."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", SERVE_ONE_REQUEST], cwd=root, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["200", "False"]


async def test_chat_completion_in_openai_shape(http: aiohttp.ClientSession):
    response = await http.post("/v1/chat/completions", json=CHAT)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "scripted"
    choice = body["choices"][0]
    assert choice == {"index": 0, "message": {"role": "assistant", "content": REPLY}, "logprobs": None,
                      "finish_reason": "stop"}
    prompt = "<user>hi\n<assistant>"  # the template's rendering, tokenized one token per character
    assert body["usage"]["prompt_tokens"] == len(prompt)
    assert body["usage"]["completion_tokens"] == len(REPLY) + 1  # the end-of-generation token counts
    assert body["usage"]["total_tokens"] == len(prompt) + len(REPLY) + 1


async def test_completion_stops_at_max_tokens_and_gives_each_choice(http: aiohttp.ClientSession):
    response = await http.post("/v1/completions", json={"prompt": ["ab", "cd"], "max_tokens": 3, "n": 2})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert all(c["text"] == REPLY[:3] and c["finish_reason"] == "length" for c in body["choices"])
    assert body["usage"]["prompt_tokens"] == 2 * 3  # each prompt counted once: BOS + 2 characters


async def test_chat_stream_is_framed_as_openai_sse(http: aiohttp.ClientSession):
    response = await http.post("/v1/chat/completions", json={**CHAT, "stream": True,
                                                              "stream_options": {"include_usage": True}})
    assert response.status == 200 and response.content_type == "text/event-stream"
    events = await read_sse(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == REPLY
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(REPLY) + 1
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_completion_stream_with_echo(http: aiohttp.ClientSession):
    response = await http.post("/v1/completions", json={"prompt": "Say", "echo": True, "stream": True})
    events = await read_sse(response)
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "Say" + REPLY


@pytest.mark.parametrize("body, param", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({**CHAT, "temperature": "hot"}, "temperature"),
    ({**CHAT, "max_tokens": "many"}, "max_tokens"),
    ({**CHAT, "max_tokens": 100_000}, "max_tokens"),
    ({**CHAT, "stop": 5}, "stop"),
    ({**CHAT, "logit_bias": {"5000": 1}}, "logit_bias"),
    ({**CHAT, "response_format": {"type": "yaml"}}, "response_format"),
    ({**CHAT, "n": 99}, "n"),
    ({**CHAT, "top_logprobs": 2}, "top_logprobs"),
    ({**CHAT, "model": 7}, "model"),
    ({**CHAT, "tools": [{"type": "function"}]}, "tools"),
    ({**CHAT, "keep_alive": "soon"}, "keep_alive"),
])
async def test_bad_chat_input_is_a_400_naming_the_parameter(http: aiohttp.ClientSession, body: dict, param: str):
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status == 400, await response.text()
    assert_openai_error(await response.json(), param)


@pytest.mark.parametrize("body, param", [
    ({"prompt": [1, 2, 99_999]}, "prompt"),
    ({"prompt": 42}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "word " * 200}, "messages"),
])
async def test_bad_completion_input_is_a_400_and_queues_nothing(http: aiohttp.ClientSession, body: dict, param: str):
    response = await http.post("/v1/completions", json=body)
    assert response.status == 400, await response.text()
    assert_openai_error(await response.json(), param)
    stats = await (await http.get("/v1/stats")).json()
    assert stats["num_waiting"] == 0 and stats["num_busy_slots"] == 0


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe"])
async def test_a_body_that_is_not_a_json_object_is_a_400(http: aiohttp.ClientSession, raw: bytes):
    response = await http.post("/v1/completions", data=raw, headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert "JSON" in assert_openai_error(await response.json())["message"]


async def test_body_too_large_wrong_method_and_unknown_path_get_openai_errors(http: aiohttp.ClientSession):
    huge = await http.post("/v1/completions", data=b"x" * (5 * 1024 * 1024),
                           headers={"Content-Type": "application/json"})
    assert huge.status == 413 and assert_openai_error(await huge.json())["code"] == "request_too_large"
    wrong = await http.get("/v1/completions")
    assert wrong.status == 405 and assert_openai_error(await wrong.json())
    missing = await http.get("/v1/nothing-here")
    assert missing.status == 404 and assert_openai_error(await missing.json())
    assert (await http.get("/openapi.json")).status == 200


async def test_unknown_models_are_404_for_generation_and_admin(http: aiohttp.ClientSession):
    for path, body in [("/v1/chat/completions", {**CHAT, "model": "missing-model"}),
                       ("/v1/completions", {"prompt": "x", "model": "missing-model"}),
                       ("/v1/embeddings", {"input": "x", "model": "missing-model"}),
                       ("/admin/models/load", {"model": "missing-model"}),
                       ("/admin/models/unload", {"model": "missing-model"})]:
        response = await http.post(path, json=body)
        assert response.status == 404, (path, await response.text())
        assert assert_openai_error(await response.json(), "model")["code"] == "model_not_found"


async def test_embeddings_count_tokens_and_encode_base64(http: aiohttp.ClientSession):
    response = await http.post("/v1/embeddings", json={"input": ["ab", "abc"]})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert [d["index"] for d in body["data"]] == [0, 1] and len(body["data"][0]["embedding"]) == 8
    assert body["usage"] == {"prompt_tokens": 3 + 4, "total_tokens": 3 + 4}  # BOS + characters
    encoded = await (await http.post("/v1/embeddings", json={"input": "ab", "encoding_format": "base64"})).json()
    assert isinstance(encoded["data"][0]["embedding"], str)
    too_long = await http.post("/v1/embeddings", json={"input": "x" * 100})
    assert too_long.status == 400 and assert_openai_error(await too_long.json(), "input")


async def test_models_health_ready_and_stats(http: aiohttp.ClientSession):
    models = await (await http.get("/v1/models")).json()
    assert models["data"][0]["id"] == "scripted" and models["data"][0]["status"] == "loaded"
    assert (await (await http.get("/health")).json()) == {"status": "ok"}
    ready = await (await http.get("/ready")).json()
    assert ready["status"] == "ready" and ready["model"] == "scripted" and ready["num_slots"] == 2
    stats = await (await http.get("/v1/stats")).json()
    assert stats["num_slots"] == 2 and stats["slot_ctx"] == 512 and stats["prefix_states"] == {"active": False}
    assert stats["kv_prefix_store"] == stats["prefix_states"]  # the old key, kept for existing clients


async def test_model_admin_loads_serves_and_unloads_a_second_model(tmp_path: Path):
    loads: list[str] = []
    async with api_server(api_config(tmp_path), loads) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        loaded = await http.post("/admin/models/load", json={"model": "second"})
        assert loaded.status == 200 and (await loaded.json())["status"] == "loaded"
        ids = [m["id"] for m in (await (await http.get("/v1/models")).json())["data"]]
        assert ids[:2] == ["scripted", "second"]
        answer = await (await http.post("/v1/chat/completions", json={**CHAT, "model": "second"})).json()
        assert answer["model"] == "second" and answer["choices"][0]["message"]["content"] == REPLY
        assert (await http.post("/admin/models/unload", json={"model": "second"})).status == 200
        again = await http.post("/admin/models/unload", json={"model": "second"})
        assert again.status == 404 and assert_openai_error(await again.json(), "model")
        bad = await http.post("/admin/models/load", json={"model": ""})
        assert bad.status == 400 and assert_openai_error(await bad.json(), "model")
        assert loads == ["scripted", "second"]  # one load each


async def test_api_key_is_required_except_for_liveness(tmp_path: Path):
    async with api_server(api_config(tmp_path, api_key="k")) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as anonymous:
        for method, path in [("POST", "/v1/completions"), ("GET", "/v1/models"), ("POST", "/admin/models/load")]:
            response = await anonymous.request(method, path, json={"prompt": "x"})
            assert response.status == 401, path
            assert assert_openai_error(await response.json())["code"] == "invalid_api_key"
        wrong = await anonymous.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        right = await anonymous.post("/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer k"})
        assert right.status == 200 and (await right.json())["choices"][0]["text"] == REPLY
        assert (await anonymous.get("/health")).status == 200


async def test_requests_while_loading_get_503_with_retry_after(tmp_path: Path):
    gate = asyncio.Event()

    async def slow_loader(config, on_progress=None):
        await gate.wait()
        raise RuntimeError("no model in this test")

    config = Config.from_flat({"data_dir": str(tmp_path)})
    test_server = TestServer(create_app(config, loader=slow_loader), host="127.0.0.1")
    await test_server.start_server()
    try:
        async with aiohttp.ClientSession(base_url=str(test_server.make_url("/"))) as session:
            response = await session.post("/v1/completions", json={"prompt": "x"})
            assert response.status == 503 and response.headers["Retry-After"]
            assert (await session.get("/ready")).status == 503
            assert (await session.get("/health")).status == 200
            gate.set()
            await asyncio.sleep(0.05)
            failed = await session.get("/ready")
            assert failed.status == 503 and "no model" in (await failed.json())["error"]
    finally:
        await test_server.close()
