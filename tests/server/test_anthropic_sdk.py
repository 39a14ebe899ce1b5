"""The official anthropic SDK against a real server on loopback with the bundled model."""
from __future__ import annotations

import asyncio
from pathlib import Path

import anthropic
import pytest

from localllm.config import Config
from tests.serving import served

pytestmark = pytest.mark.integration
KEY = "sdk-key"
MODEL = "gemma3-270m"
HELLO = [{"role": "user", "content": "Say hello."}]
NO_CACHE = {"X-LocalLLM-Cache": "off"}
"""Each call runs the model (greedy requests would otherwise replay the response cache)."""
GREEDY = {"extra_body": {"temperature": 0}}
"""This SDK has no temperature argument (newer Claude models dropped it); older clients send it."""
WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                            "required": ["city"], "additionalProperties": False}}


@pytest.fixture(scope="module")
async def base_url(data_dir: Path, model_path: Path):
    config = Config.from_flat({"parallel": 2, "ctx": 4096, "threads": 2, "api_key": KEY, "data_dir": str(data_dir)})
    async with served(config) as server:
        yield str(server.make_url("/")).rstrip("/")


@pytest.fixture(scope="module")
def client(base_url: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=base_url, api_key=KEY, max_retries=0)


async def test_create_with_a_system_prompt_and_count_tokens(client: anthropic.AsyncAnthropic):
    message = await client.messages.create(model=MODEL, max_tokens=8, **GREEDY, messages=HELLO,
                                           system="You are terse.", extra_headers=NO_CACHE)
    assert message.id.startswith("msg_") and message.role == "assistant" and message.model == MODEL
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens") and 1 <= message.usage.output_tokens <= 8
    counted = await client.messages.count_tokens(model=MODEL, messages=HELLO, system="You are terse.")
    bare = await client.messages.count_tokens(model=MODEL, messages=HELLO)
    assert counted.input_tokens == message.usage.input_tokens + message.usage.cache_read_input_tokens
    assert counted.input_tokens > bare.input_tokens  # the system prompt is in the rendered prompt


async def test_stream_text_and_final_message_match_create(client: anthropic.AsyncAnthropic):
    async with client.messages.stream(model=MODEL, max_tokens=12, **GREEDY, messages=HELLO,
                                      extra_headers=NO_CACHE) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    created = await client.messages.create(model=MODEL, max_tokens=12, **GREEDY, messages=HELLO,
                                           extra_headers=NO_CACHE)
    assert text and final.content[0].text == text == created.content[0].text
    assert final.stop_reason == created.stop_reason and final.usage.output_tokens == created.usage.output_tokens
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == \
        created.usage.input_tokens + created.usage.cache_read_input_tokens


async def test_stop_sequences_end_the_text_before_them(client: anthropic.AsyncAnthropic):
    messages = [{"role": "user", "content": "Write a sentence about the sea."}]
    full = (await client.messages.create(model=MODEL, max_tokens=24, **GREEDY, messages=messages,
                                         extra_headers=NO_CACHE)).content[0].text
    words = full.split()
    assert len(words) >= 3, full
    stop = " " + words[2]  # greedy and alone: the same text again, cut before its third word
    cut = await client.messages.create(model=MODEL, max_tokens=24, **GREEDY, messages=messages,
                                       stop_sequences=[stop], extra_headers=NO_CACHE)
    assert cut.content[0].text == full[:full.index(stop)]
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", stop)


async def test_a_claude_code_style_client_with_x_api_key(base_url: str):
    """Claude Code and older SDKs send the key as `x-api-key` (no Authorization header)."""
    def call():
        with anthropic.Anthropic(base_url=base_url, api_key=None, auth_token=None, max_retries=0,
                                 default_headers={"x-api-key": KEY}) as sync_client:
            return sync_client.messages.create(model=MODEL, max_tokens=4, messages=HELLO)

    message = await asyncio.to_thread(call)  # the server runs on this event loop
    assert message.content[0].text


async def test_bad_requests_raise_the_sdks_errors(client: anthropic.AsyncAnthropic, base_url: str):
    with pytest.raises(anthropic.BadRequestError) as missing:
        # messages.create itself insists on max_tokens: the SDK's raw post sends a body without it
        await client.post("/v1/messages", cast_to=anthropic.types.Message, body={"model": MODEL, "messages": HELLO})
    assert missing.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in missing.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as unknown:
        await client.messages.create(model="no-such-model", max_tokens=4, messages=HELLO)
    assert unknown.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as image:
        await client.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}])
    assert "image" in image.value.body["error"]["message"]
    wrong = anthropic.AsyncAnthropic(base_url=base_url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        await wrong.messages.create(model=MODEL, max_tokens=4, messages=HELLO)
    assert denied.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        await wrong.messages.count_tokens(model=MODEL, messages=HELLO)


FORCED = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
"""One call (with parallel calls allowed, the small model repeats its call until max_tokens)."""


async def test_forced_tool_use_and_a_tool_result_round_trip(client: anthropic.AsyncAnthropic):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    called = await client.messages.create(model=MODEL, max_tokens=48, **GREEDY, messages=ask, tools=[WEATHER],
                                          tool_choice=FORCED)
    [use] = [block for block in called.content if block.type == "tool_use"]
    assert called.stop_reason == "tool_use" and use.name == "get_weather"
    assert set(use.input) == {"city"} and isinstance(use.input["city"], str)  # valid against the schema
    async with client.messages.stream(model=MODEL, max_tokens=48, **GREEDY, messages=ask, tools=[WEATHER],
                                      tool_choice=FORCED) as stream:
        streamed = await stream.get_final_message()
    [streamed_use] = [block for block in streamed.content if block.type == "tool_use"]
    assert streamed_use.input == use.input and streamed.stop_reason == "tool_use"
    answer = await client.messages.create(model=MODEL, max_tokens=8, **GREEDY, tools=[WEATHER], messages=[
        *ask, {"role": "assistant", "content": called.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C and sunny"}]}])
    assert answer.content and answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    counted = await client.messages.count_tokens(model=MODEL, messages=ask, tools=[WEATHER])
    assert counted.input_tokens > (await client.messages.count_tokens(model=MODEL, messages=ask)).input_tokens
