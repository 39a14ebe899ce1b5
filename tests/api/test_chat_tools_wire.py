"""Tool calls and reasoning in /v1/chat/completions' wire format, over a scripted backend whose
every answer is a fixed text (a call, or thinking then an answer), read with the official openai
SDK: message.tool_calls / reasoning_content, and the stream deltas its helpers put together."""
from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import openai
import pytest
from aiohttp.test_utils import TestServer

from localllm.compose import start_served
from localllm.config import Config
from localllm.server.app import create_app
from tests.api.fake_model import ScriptedBackend, api_config

GENERIC = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
THINKING = GENERIC + "{# a reasoning template: it knows </think> #}"
CALL = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}]
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@asynccontextmanager
async def scripted(tmp_path: Path, reply: str, template: str, **flat: object) -> AsyncIterator[openai.AsyncOpenAI]:
    """A server whose model answers `reply` to everything, with `template` as its chat template."""

    class Backend(ScriptedBackend):
        def metadata(self, key: str) -> str | None:
            return template if key == "tokenizer.chat_template" else super().metadata(key)

    async def load(config: Config, on_progress=None):
        return await start_served(Backend(config.engine.ctx, reply), config, name="scripted",
                                  path=Path("/models/scripted.gguf"), spec=None, identity="scripted:x",
                                  started_s=time.monotonic())

    server = TestServer(create_app(api_config(tmp_path, **{"ctx": 8192, **flat}), loader=load), host="127.0.0.1")
    await server.start_server()
    try:
        async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="x", max_retries=0) as client:
            yield client
    finally:
        await server.close()


async def test_a_call_comes_back_as_message_tool_calls(tmp_path: Path):
    async with scripted(tmp_path, CALL, GENERIC) as client:
        reply = await client.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


async def test_a_streamed_call_arrives_as_tool_call_fragments_the_sdk_puts_together(tmp_path: Path):
    async with scripted(tmp_path, CALL, GENERIC) as client:
        chunks = [c async for c in await client.chat.completions.create(
            model="scripted", messages=ASK, tools=TOOLS, stream=True)]
        async with client.chat.completions.stream(model="scripted", messages=ASK, tools=TOOLS) as stream:
            final = await stream.get_final_completion()
    fragments = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    first, *rest = fragments
    assert (first.index, first.type, first.function.name, first.function.arguments) == (0, "function", "get_weather", "")
    assert first.id and all(f.id is None and f.function.name is None for f in rest)
    assert json.loads("".join(f.function.arguments for f in rest)) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    [call] = final.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}


async def test_tool_choice_none_leaves_call_text_as_content(tmp_path: Path):
    async with scripted(tmp_path, CALL, GENERIC) as client:
        reply = await client.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS, tool_choice="none")
    assert reply.choices[0].message.content == CALL and not reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "stop"


async def test_legacy_functions_answer_with_function_call(tmp_path: Path):
    async with scripted(tmp_path, CALL, GENERIC) as client:
        reply = await client.chat.completions.create(model="scripted", messages=ASK,
                                                     functions=[TOOLS[0]["function"]])
    choice = reply.choices[0]
    assert choice.finish_reason == "function_call" and not choice.message.tool_calls
    assert choice.message.function_call.name == "get_weather"
    assert json.loads(choice.message.function_call.arguments) == {"city": "Paris"}


async def test_thinking_goes_to_reasoning_content(tmp_path: Path):
    async with scripted(tmp_path, "<think>It is sunny there.</think>Sunny.", THINKING) as client:
        reply = await client.chat.completions.create(model="scripted", messages=ASK)
        chunks = [c async for c in await client.chat.completions.create(model="scripted", messages=ASK, stream=True)]
    message = reply.choices[0].message
    assert message.content == "Sunny." and message.model_extra["reasoning_content"] == "It is sunny there."
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == "It is sunny there."
    assert "".join(d.content or "" for d in deltas) == "Sunny."


async def test_reasoning_format_none_keeps_the_raw_text(tmp_path: Path):
    raw = "<think>It is sunny there.</think>Sunny."
    async with scripted(tmp_path, raw, THINKING, reasoning_format="none") as client:
        reply = await client.chat.completions.create(model="scripted", messages=ASK)
    assert reply.choices[0].message.content == raw
    assert "reasoning_content" not in (reply.choices[0].message.model_extra or {})


async def test_template_kwargs_and_reasoning_effort_reach_the_template(tmp_path: Path):
    template = GENERIC + "{% if enable_thinking is false %}[no thinking]{% endif %}[{{ reasoning_effort }}]"
    async with scripted(tmp_path, "Sunny.", template) as client:
        plain = await client.chat.completions.create(model="scripted", messages=ASK)
        told = await client.chat.completions.create(model="scripted", messages=ASK, reasoning_effort="low",
                                                    extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    # the scripted tokenizer makes one token per character
    assert told.usage.prompt_tokens - plain.usage.prompt_tokens == len("[no thinking]") + len("low")


@pytest.mark.parametrize("body, param, needle", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "not among the tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tools",
     "JSON Schema of type object"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "nonsense"}}}}}], "tool_choice": "required"}, "tools", "nonsense"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools", "must match"),
    ({"messages": ASK + [{"role": "tool", "tool_call_id": "call_x", "content": "20C"}]}, "messages",
     "matches no tool call"),
    ({"messages": ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{not json"}}]}]},
     "messages", "not valid JSON"),
    ({"chat_template_kwargs": {"messages": 1}}, "chat_template_kwargs", "chat_template_kwargs"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort", "reasoning_effort"),
])
async def test_bad_tool_input_is_a_400_in_openai_shape(tmp_path: Path, body: dict, param: str, needle: str):
    async with scripted(tmp_path, CALL, GENERIC) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="scripted", messages=body.get("messages", ASK),
                                                 extra_body={k: v for k, v in body.items() if k != "messages"})
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param and caught.value.body["type"] == "invalid_request_error"
    assert needle in caught.value.body["message"]


async def test_the_response_cache_keys_by_tools_and_tool_choice(tmp_path: Path):
    """Tools render into the prompt, tool_choice picks the grammar (its digest is in the key); a
    hit is parsed again, into calls."""
    other = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    async with scripted(tmp_path, CALL, GENERIC, cache_enabled=True, cache_dir=str(tmp_path / "cache")) as client:
        async def state(tools: list, tool_choice: str) -> tuple[str, object]:
            raw = await client.chat.completions.with_raw_response.create(
                model="scripted", messages=ASK, tools=tools, tool_choice=tool_choice, temperature=0)
            return raw.headers["x-localllm-cache"], raw.parse()

        states = [(await state(tools, choice))[0] for tools, choice in (
            (TOOLS, "required"), (TOOLS, "required"), (TOOLS, "auto"), (TOOLS + [other], "required"))]
        assert states == ["miss", "hit", "miss", "miss"]
        hit_state, hit = await state(TOOLS, "required")
    assert hit_state == "hit" and hit.choices[0].finish_reason == "tool_calls"
    assert hit.choices[0].message.tool_calls[0].function.name == "get_weather"
