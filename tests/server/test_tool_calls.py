"""Tool calling end to end: the bundled model on a real loopback server, the official openai SDK
and langchain-openai. The bundled model is a small base model: calls are valid because the tool
grammar forces them (tool_choice required or named), so every forced call must parse and
validate against its schema."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

from localllm.config import Config
from tests.serving import served

pytestmark = pytest.mark.integration
MODEL = "gemma3-270m"


class Weather(BaseModel):
    """Current weather in a city."""

    model_config = ConfigDict(extra="forbid")
    city: str = Field(max_length=40)
    unit: Literal["celsius", "fahrenheit"]


class LocalTime(BaseModel):
    """The local time in a time zone."""

    model_config = ConfigDict(extra="forbid")
    timezone: str = Field(max_length=40)


WEATHER = openai.pydantic_function_tool(Weather, name="get_weather")
TIME = openai.pydantic_function_tool(LocalTime, name="get_time")
SCHEMAS = {"get_weather": Weather, "get_time": LocalTime}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
FORCED = {"model": MODEL, "max_tokens": 64, "temperature": 0, "parallel_tool_calls": False}
"""One call: a base model under a grammar that allows several keeps calling until max_tokens."""


@pytest.fixture(scope="module")
async def base_url(data_dir: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    config = Config.from_flat({"parallel": 2, "ctx": 8192, "threads": 2, "data_dir": str(data_dir),
                               "cache_dir": str(tmp_path_factory.mktemp("cache"))})
    async with served(config) as server:
        yield str(server.make_url("/v1"))


@pytest.fixture(scope="module")
def aclient(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0)


def assert_valid_calls(message, names: set[str]) -> None:
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.type == "function" and call.id and call.function.name in names
        SCHEMAS[call.function.name].model_validate_json(call.function.arguments)  # raises if invalid


async def test_required_calls_parse_and_validate(aclient: openai.AsyncOpenAI):
    reply = await aclient.chat.completions.create(messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                                  **FORCED)
    assert reply.choices[0].finish_reason == "tool_calls"
    assert reply.choices[0].message.content is None
    assert_valid_calls(reply.choices[0].message, {"get_weather", "get_time"})


async def test_a_named_call_is_that_function_once(aclient: openai.AsyncOpenAI):
    named = {**FORCED, "parallel_tool_calls": True}  # OpenAI's default: still one call of the named function
    reply = await aclient.chat.completions.create(
        messages=ASK, tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}},
        **named)
    [call] = reply.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    assert_valid_calls(reply.choices[0].message, {"get_time"})


async def test_the_sdk_stream_helper_parses_a_forced_call(aclient: openai.AsyncOpenAI):
    kinds = []
    async with aclient.chat.completions.stream(
            messages=ASK, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
            **FORCED) as stream:
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_completion()
    assert "tool_calls.function.arguments.delta" in kinds and "tool_calls.function.arguments.done" in kinds
    [call] = final.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and isinstance(call.function.parsed_arguments, Weather)
    assert final.choices[0].finish_reason == "tool_calls"


async def test_a_full_loop_call_result_answer(aclient: openai.AsyncOpenAI):
    first = await aclient.chat.completions.create(messages=ASK, tools=[WEATHER], tool_choice="required", **FORCED)
    [call] = first.choices[0].message.tool_calls[:1]
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(include={"id", "type", "function"})]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 21, "sky": "clear"})}]
    answer = await aclient.chat.completions.create(messages=history, tools=[WEATHER], model=MODEL, max_tokens=24,
                                                   temperature=0)
    choice = answer.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content or choice.message.tool_calls
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result were rendered


async def test_tool_choice_none_never_calls(aclient: openai.AsyncOpenAI):
    reply = await aclient.chat.completions.create(messages=ASK, tools=[WEATHER], tool_choice="none",
                                                  model=MODEL, max_tokens=16, temperature=0)
    assert not reply.choices[0].message.tool_calls and isinstance(reply.choices[0].message.content, str)
    assert reply.choices[0].finish_reason in ("stop", "length")


async def test_the_response_cache_tells_tool_lists_apart(aclient: openai.AsyncOpenAI):
    async def cached(tools: list) -> tuple[str, object]:
        raw = await aclient.chat.completions.with_raw_response.create(
            messages=[{"role": "user", "content": "Weather in Rome?"}], tools=tools, tool_choice="required", **FORCED)
        return raw.headers["x-localllm-cache"], raw.parse()

    states = [(await cached(tools))[0] for tools in ([WEATHER], [WEATHER], [WEATHER, TIME], [WEATHER, TIME])]
    assert states == ["miss", "hit", "miss", "hit"]
    _, hit = await cached([WEATHER])
    assert_valid_calls(hit.choices[0].message, {"get_weather"})  # a hit is parsed again into calls


async def test_langchain_bind_tools_returns_tool_calls(base_url: str):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=base_url, api_key="none", model=MODEL, temperature=0, max_tokens=64, max_retries=0)
    bound = llm.bind_tools([Weather], tool_choice="Weather", parallel_tool_calls=False)
    message = await bound.ainvoke("What is the weather in Oslo?")
    [call] = message.tool_calls
    assert call["name"] == "Weather" and call["id"]
    Weather.model_validate(call["args"])
    chunks = [chunk async for chunk in bound.astream("Weather in Oslo?")]
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk  # LangChain's AIMessageChunk merging of delta.tool_calls fragments
    [streamed] = merged.tool_calls
    assert streamed["name"] == "Weather"
    Weather.model_validate(streamed["args"])


async def test_langchain_structured_output_by_function_calling(base_url: str):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=base_url, api_key="none", model=MODEL, temperature=0, max_tokens=64, max_retries=0)
    result = await llm.with_structured_output(Weather, method="function_calling").ainvoke("Weather in Lima?")
    assert isinstance(result, Weather)
