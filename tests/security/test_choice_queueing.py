"""Queueing the choices of one API request: all or none, and a full queue is a 429 (issue 18.7).

A later choice that cannot be queued (a bad prompt among several, a full queue) must cancel the
choices queued before it; before, they stayed counted against the queue bound forever."""
from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from localllm.server.errors import ApiError
from localllm.server.generation import start_choices
from localllm.server.schemas import GenerationRequest
from localllm.types import QueueFull, SamplingParams
from tests.api.fake_model import CHAR_BASE, api_config, api_server


async def test_a_refused_later_prompt_leaves_no_earlier_choice_queued(tmp_path: Path):
    config = api_config(tmp_path, parallel=1, max_waiting=1)  # two requests in flight at most
    async with api_server(config) as server:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
            good, out_of_vocabulary = [CHAR_BASE + ord("a")], [10**6]
            for _ in range(3):
                response = await http.post("/v1/completions", json={
                    "model": "scripted", "prompt": [good, out_of_vocabulary], "max_tokens": 2})
                assert response.status == 400, await response.text()
                assert (await response.json())["error"]["param"] == "prompt"
            response = await http.post("/v1/completions", json={"model": "scripted", "prompt": "hi", "max_tokens": 2})
            assert response.status == 200, await response.text()


class RefusingEngine:
    """Queues `room` choices, then raises what a full queue raises."""

    slot_ctx = 64

    def __init__(self, room: int) -> None:
        self.room = room
        self.cancelled: list[str] = []

    def has_room_for(self, num_requests: int) -> bool:
        return True  # the check passed; the queue filled before the last choice

    def tokenize(self, text: str, **_: object) -> list[int]:
        return [ord(c) for c in text]

    def check_prompt(self, prompt_ids: list[int], params: SamplingParams) -> None:
        pass

    def generate(self, prompt, params, *, add_special: bool = True, cache_namespace: str = ""):
        if self.room == 0:
            raise QueueFull("all slots are busy")
        self.room -= 1
        engine = self

        class Stream:
            request_id = f"r{self.room}"

            def cancel(self) -> None:
                engine.cancelled.append(self.request_id)

        return Stream()


async def test_queue_full_from_the_engine_is_a_429_with_retry_after_and_cancels_queued_choices():
    engine = RefusingEngine(room=2)
    gen = GenerationRequest(model=None, prompts=["a", "b", "c"], params=SamplingParams(max_tokens=1), n=1,
                            stream=False, include_usage=False)
    with pytest.raises(ApiError) as refused:
        await start_choices(engine, gen, add_special=True)  # type: ignore[arg-type]
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "1"}
    assert sorted(engine.cancelled) == ["r0", "r1"]
