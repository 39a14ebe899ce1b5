"""The HTTP API on a real aiohttp server on loopback, serving the bundled model."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from localllm.config import Config
from tests.serving import served

pytestmark = pytest.mark.integration

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
async def server(data_dir: Path, model_path: Path):
    config = Config.from_flat({"parallel": 4, "ctx": 8192, "threads": 2, "api_key": API_KEY, "data_dir": str(data_dir)})
    async with served(config) as test_server:
        yield test_server


@pytest.fixture(scope="module")
async def http(server: TestServer):
    async with aiohttp.ClientSession(base_url=str(server.make_url("/")), headers=AUTH) as session:
        yield session


async def read_sse(response: aiohttp.ClientResponse) -> list[dict | str]:
    events: list[dict | str] = []
    async for raw in response.content:
        line = raw.decode().strip()
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


async def wait_idle(http: aiohttp.ClientSession, also=lambda stats: True) -> dict:
    """Polls /v1/stats until no slot is busy and `also(stats)` holds (10 s at most)."""
    for _ in range(500):
        stats = await (await http.get("/v1/stats")).json()
        if stats["num_busy_slots"] == 0 and stats["num_waiting"] == 0 and also(stats):
            return stats
        await asyncio.sleep(0.02)
    raise AssertionError("server did not become idle")


async def test_chat_completion(http):
    response = await http.post("/v1/chat/completions", json={
        "model": "gemma3-270m", "temperature": 0, "max_tokens": 12,
        "messages": [{"role": "system", "content": "Answer briefly."},
                     {"role": "user", "content": "What is the capital of France?"}],
    })
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["completion_tokens"] >= 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert "cached_tokens" in usage["prompt_tokens_details"]


async def test_chat_stream_has_openai_chunk_structure(http):
    response = await http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Say hello."}], "temperature": 0, "max_tokens": 8,
        "stream": True, "stream_options": {"include_usage": True},
    })
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = await read_sse(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] >= 1
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    plain = await (await http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Say hello."}], "temperature": 0, "max_tokens": 8})).json()
    assert streamed == plain["choices"][0]["message"]["content"]


async def test_completion_with_echo_stop_and_several_choices(http):
    response = await http.post("/v1/completions", json={
        "prompt": ["1, 2, 3,", "a, b, c,"], "temperature": 0, "max_tokens": 6, "echo": True,
    })
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["object"] == "text_completion"
    texts = [c["text"] for c in body["choices"]]
    assert texts[0].startswith("1, 2, 3,") and texts[1].startswith("a, b, c,")
    stopped = await (await http.post("/v1/completions", json={
        "prompt": "1, 2, 3,", "temperature": 0, "max_tokens": 10, "stop": [" 5"]})).json()
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert " 5" not in stopped["choices"][0]["text"]


async def test_repeated_prompt_reports_cached_tokens(http):
    prompt = "Facts about owls: " + "Owls hunt at night. " * 40
    body = {"prompt": prompt, "temperature": 0, "max_tokens": 2, "cache": False}  # the KV cache, not the response cache
    first = await (await http.post("/v1/completions", json=body)).json()
    second = await (await http.post("/v1/completions", json=body)).json()
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == second["usage"]["prompt_tokens"] - 1
    assert first["usage"]["prompt_tokens"] == second["usage"]["prompt_tokens"]


@pytest.mark.parametrize("body, status, param", [
    ({"messages": "hi"}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 7}, 400, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"999999999": 5}}, 400, "logit_bias"),
    ({"messages": [{"role": "user", "content": "x"}], "model": "gpt-9"}, 404, "model"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 99}, 400, "n"),
])
async def test_bad_chat_input_gets_an_openai_error(http, body, status, param):
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status == status
    error = (await response.json())["error"]
    assert error["param"] == param and error["message"] and error["type"]


async def test_bad_completion_input_gets_an_openai_error(http):
    cases = [
        ({"prompt": [1, 2, 99999999]}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "word " * 5000}, "messages"),
    ]
    for body, param in cases:
        response = await http.post("/v1/completions", json=body)
        assert response.status == 400, body
        assert (await response.json())["error"]["param"] == param
    response = await http.post("/v1/completions", data=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status == 400 and "JSON" in (await response.json())["error"]["message"]
    await wait_idle(http)  # nothing was queued by the refused requests


async def test_api_key_is_required(server: TestServer):
    async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as anonymous:
        response = await anonymous.post("/v1/completions", json={"prompt": "x"})
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "invalid_api_key"
        wrong = await anonymous.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        assert (await anonymous.get("/health")).status == 200  # liveness needs no key


async def test_models_health_ready_and_stats(http):
    assert (await http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})).status == 200
    models = await (await http.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["gemma3-270m"]
    assert (await http.get("/health")).status == 200
    ready = await http.get("/ready")
    assert ready.status == 200 and (await ready.json())["status"] == "ready"
    stats = await (await http.get("/v1/stats")).json()
    assert stats["num_slots"] == 4 and len(stats["slots"]) == 4
    assert stats["num_kv_cells_total"] >= 8192
    assert stats["num_generated_tokens_total"] > 0
    host = stats["host"]
    assert host["ram_total_bytes"] > host["ram_available_bytes"] > 0
    assert host["process_rss_bytes"] > 100 * 2**20  # the model is mapped into this process
    assert isinstance(host["gpus"], list) and host["gpu_status"]


async def test_client_disconnect_mid_stream_frees_the_slot(http, server: TestServer):
    before = (await wait_idle(http))["finished_by_reason"].get("abort", 0)
    async with aiohttp.ClientSession(base_url=str(server.make_url("/")), headers=AUTH) as other:
        response = await other.post("/v1/completions", json={
            "prompt": "Count to a thousand: 1, 2, 3,", "max_tokens": 1500, "stream": True, "temperature": 0,
            "ignore_eos": True})
        await response.content.readline()
        response.close()  # hang up mid-stream
    stats = await wait_idle(http, lambda s: s["finished_by_reason"].get("abort", 0) == before + 1)
    assert all(slot["state"] == "idle" for slot in stats["slots"])


def metric_value(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name + labels + " ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not in /metrics")


async def test_metrics_expose_latency_tokens_prefix_cache_and_errors(http):
    before = await (await http.get("/metrics")).text()
    prompt = "Metrics check: " + "the quick brown fox jumps over the lazy dog. " * 10
    for _ in range(2):
        response = await http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 4, "temperature": 0,
                                                               "ignore_eos": True})
        assert response.status == 200
    assert (await http.post("/v1/completions", json={"prompt": 5})).status == 400
    response = await http.get("/metrics")
    assert response.status == 200 and response.content_type == "text/plain"
    after = await response.text()
    for name in ["localllm_time_to_first_token_seconds_count", "localllm_inter_token_latency_seconds_count",
                 "localllm_request_duration_seconds_count", "localllm_generation_tokens_total",
                 "localllm_prompt_tokens_total", "localllm_prefix_cache_queries_total",
                 "localllm_prefix_cache_hits_total"]:
        assert metric_value(after, name) > metric_value(before, name) if name in before else metric_value(after, name) > 0
    assert metric_value(after, "localllm_inter_token_latency_seconds_count") - \
        metric_value(before, "localllm_inter_token_latency_seconds_count") == 6  # 2 requests x 3 gaps
    assert 0 <= metric_value(after, "localllm_kv_cache_usage_ratio") <= 1
    assert metric_value(after, "localllm_requests_running") == 0
    assert metric_value(after, "localllm_errors_total", '{status="400",type="invalid_request_error"}') >= 1


async def test_sixteen_concurrent_streams_all_finish_and_free_their_slots(http):
    async def one(i: int) -> list:
        response = await http.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": f"Tell me fact number {i}."}], "max_tokens": 12,
            "temperature": 0.8, "seed": i, "stream": True, "ignore_eos": True})
        assert response.status == 200
        return await read_sse(response)

    results = await asyncio.gather(*(one(i) for i in range(16)))  # 4 slots: 12 of them queue first
    for events in results:
        assert events[-1] == "[DONE]"
        assert [c for c in events[:-1] if c["choices"][0]["finish_reason"]][0]["choices"][0]["finish_reason"] == "length"
    stats = await wait_idle(http)
    assert all(slot["state"] == "idle" for slot in stats["slots"])
