"""Issue 14 item 17: per-minute token limits hold against concurrent requests. A request reserves
its prompt plus max_tokens (or the slot's remaining context) when admitted, the real count is
settled when it ends, and a reservation that does not fit is a 429 with Retry-After.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from localllm.config import Config
from localllm.server.errors import ApiError
from tests.serving import served

pytestmark = pytest.mark.integration
TPM = 100
ALICE = {"Authorization": "Bearer alice-secret", "X-LocalLLM-Cache": "off"}
BOB = {"Authorization": "Bearer bob-secret", "X-LocalLLM-Cache": "off"}


@pytest.fixture(scope="module")
async def base_url(data_dir: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text("alice:alice-secret\nbob:bob-secret\ncarol:carol-secret\n")
    config = Config.from_flat({"parallel": 2, "ctx": 2048, "threads": 2, "data_dir": str(data_dir),
                               "api_key_file": str(key_file), "rate_limit_tpm": TPM})
    async with served(config) as server:
        yield str(server.make_url("/"))


def body(max_tokens: int | None, **extra: object) -> dict:
    return {"prompt": "Once upon a time", "temperature": 0, "ignore_eos": True, **extra,
            **({"max_tokens": max_tokens} if max_tokens is not None else {})}


async def test_a_running_request_holds_its_reservation(base_url: str):
    async with aiohttp.ClientSession(base_url=base_url) as http:
        first = await http.post("/v1/completions", json=body(60, stream=True), headers=ALICE)
        assert first.status == 200
        await first.content.readline()  # admitted and generating: ~65 tokens reserved
        second = await http.post("/v1/completions", json=body(60), headers=ALICE)
        assert second.status == 429 and int(second.headers["Retry-After"]) >= 1
        assert (await second.json())["error"]["code"] == "rate_limit_exceeded"
        other_key = await http.post("/v1/completions", json=body(60), headers=BOB)
        assert other_key.status == 200  # each key has its own minute
        await first.read()
        # Settled at the real count (prompt + 60): 25 more fit, 60 do not.
        assert (await http.post("/v1/completions", json=body(20), headers=ALICE)).status == 200
        assert (await http.post("/v1/completions", json=body(30), headers=ALICE)).status == 429


async def test_without_max_tokens_the_slot_context_is_reserved(base_url: str):
    async with aiohttp.ClientSession(base_url=base_url) as http:
        response = await http.post("/v1/completions", json=body(None), headers={
            "Authorization": "Bearer bob-secret", "X-LocalLLM-Cache": "off", "X-Request-Id": "no-max"})
        assert response.status == 429  # ~1,024 tokens of slot context > 100 per minute
        assert "max_tokens" in (await response.json())["error"]["message"]


def test_concurrent_reservations_cannot_overrun_the_limit():
    from localllm.server.rate_limits import RateLimiter  # new in this change: old main fails here

    limiter = RateLimiter(rpm=0, tpm=TPM)
    tickets = [limiter.admit("k")[0] for _ in range(3)]
    limiter.reserve(tickets[0], 60)
    with pytest.raises(ApiError) as refused:
        limiter.reserve(tickets[1], 60)
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"  # a running request
    limiter.settle(tickets[1], 0)
    limiter.settle(tickets[0], 30)  # used less than reserved: the rest is free again
    limiter.reserve(tickets[2], 70)
    limiter.settle(tickets[2], 70)
    with pytest.raises(ApiError) as refused:
        limiter.admit("k")
    assert int(refused.value.headers["Retry-After"]) > 1  # settled tokens leave with the minute


def test_settled_tokens_leave_the_window_after_a_minute(monkeypatch: pytest.MonkeyPatch):
    from localllm.server import rate_limits
    from localllm.server.rate_limits import RateLimiter

    now = [1000.0]
    monkeypatch.setattr(rate_limits.time, "monotonic", lambda: now[0])
    limiter = RateLimiter(rpm=0, tpm=TPM)
    ticket, _ = limiter.admit("k")
    limiter.reserve(ticket, 90)
    now[0] += 120  # a long request: its reservation holds while it runs
    with pytest.raises(ApiError):
        limiter.reserve(limiter.admit("k")[0], 20)
    limiter.settle(ticket, 90)
    now[0] += 61
    limiter.reserve(limiter.admit("k")[0], 90)


async def test_concurrent_clients_stay_within_the_limit(base_url: str):
    carol = {"Authorization": "Bearer carol-secret", "X-LocalLLM-Cache": "off"}
    async with aiohttp.ClientSession(base_url=base_url) as http:
        responses = await asyncio.gather(*(http.post("/v1/completions", json=body(30, prompt=f"Story {i}:"),
                                                     headers=carol) for i in range(4)))
        statuses = sorted(r.status for r in responses)
        assert statuses[0] == 200 and statuses[-1] == 429  # ~35 tokens each: at most 2 fit in 100
        used = sum([(await r.json())["usage"]["total_tokens"] for r in responses if r.status == 200])
        assert used <= TPM
