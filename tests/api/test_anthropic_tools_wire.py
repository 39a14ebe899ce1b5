"""Tool use and thinking in Anthropic's wire format, over a scripted backend whose every answer is
a fixed text (a call, or thinking then an answer), read with the official anthropic SDK."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anthropic
import pytest
from aiohttp.test_utils import TestServer

from localllm.server.app import create_app
from tests.api.fake_model import api_config, scripted_loader

GENERIC = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
THINKING = GENERIC + "{# a reasoning template: it knows </think> #}"
CALL = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'
WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@asynccontextmanager
async def scripted(tmp_path: Path, reply: str, template: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """A server whose model answers `reply` to everything, with `template` as its chat template."""
    loader = scripted_loader(reply=reply, template=template)
    server = TestServer(create_app(api_config(tmp_path, ctx=8192), loader=loader), host="127.0.0.1")
    await server.start_server()
    try:
        async with anthropic.AsyncAnthropic(base_url=str(server.make_url("/")).rstrip("/"), api_key="x",
                                            max_retries=0) as client:
            yield client
    finally:
        await server.close()


async def test_a_call_is_a_tool_use_block_plain_and_streamed(tmp_path: Path):
    async with scripted(tmp_path, CALL, GENERIC) as client:
        message = await client.messages.create(model="scripted", max_tokens=200, messages=ASK, tools=[WEATHER])
        async with client.messages.stream(model="scripted", max_tokens=200, messages=ASK, tools=[WEATHER]) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_message()
    [use] = message.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"} and use.id
    assert message.stop_reason == "tool_use"
    [streamed] = final.content
    assert (streamed.type, streamed.name, streamed.input, final.stop_reason) == (
        "tool_use", "get_weather", {"city": "Paris"}, "tool_use")
    assert any(e.type == "input_json" for e in events)  # the SDK's own event for input_json_delta


async def test_a_tool_result_round_trip_reaches_the_template(tmp_path: Path):
    async with scripted(tmp_path, CALL, GENERIC) as client:
        first = await client.messages.create(model="scripted", max_tokens=200, messages=ASK, tools=[WEATHER])
        [use] = first.content
        history = [*ASK, {"role": "assistant", "content": first.content},
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C"}]}]
        counted = await client.messages.count_tokens(model="scripted", messages=history, tools=[WEATHER])
        bare = await client.messages.count_tokens(model="scripted", messages=ASK, tools=[WEATHER])
        again = await client.messages.create(model="scripted", max_tokens=200, messages=history, tools=[WEATHER])
        with pytest.raises(anthropic.BadRequestError) as unknown:  # a result for a call never made
            await client.messages.create(model="scripted", max_tokens=200, tools=[WEATHER], messages=[
                *ASK, {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "1"}]}])
    assert counted.input_tokens > bare.input_tokens + len("18C")
    assert again.stop_reason == "tool_use"
    assert unknown.value.body["type"] == "error" and "toolu_x" in unknown.value.body["error"]["message"]


async def test_tool_choice_none_leaves_the_call_text_as_text(tmp_path: Path):
    async with scripted(tmp_path, CALL, GENERIC) as client:
        message = await client.messages.create(model="scripted", max_tokens=200, messages=ASK, tools=[WEATHER],
                                               tool_choice={"type": "none"})
    assert [(b.type, b.text) for b in message.content] == [("text", CALL)] and message.stop_reason == "end_turn"


async def test_thinking_is_a_thinking_block(tmp_path: Path):
    async with scripted(tmp_path, "<think>It is sunny there.</think>Sunny.", THINKING) as client:
        message = await client.messages.create(model="scripted", max_tokens=200, messages=ASK,
                                               thinking={"type": "enabled", "budget_tokens": 1024})
        async with client.messages.stream(model="scripted", max_tokens=200, messages=ASK) as stream:
            final = await stream.get_final_message()
    for answer in (message, final):
        assert [b.type for b in answer.content] == ["thinking", "text"]
        assert answer.content[0].thinking == "It is sunny there." and answer.content[1].text == "Sunny."


@pytest.mark.parametrize("tools, choice, words", [
    ([WEATHER], {"type": "tool", "name": "nope"}, "not among the tools"),
    ([{**WEATHER, "input_schema": {"type": "string"}}], None, "type object"),
    ([{**WEATHER, "name": "bad name!"}], None, "must match"),
])
async def test_bad_tools_are_400s_in_anthropics_shape(tmp_path: Path, tools: list, choice: dict | None, words: str):
    async with scripted(tmp_path, CALL, GENERIC) as client:
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.create(model="scripted", max_tokens=200, messages=ASK, tools=tools,
                                         **({"tool_choice": choice} if choice else {}))
    assert bad.value.body["error"]["type"] == "invalid_request_error" and words in bad.value.body["error"]["message"]
