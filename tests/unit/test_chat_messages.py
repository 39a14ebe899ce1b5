"""OpenAI-shape messages, tools and tool_choice: normalised for templates; bad input is an
InvalidParam naming the parameter (the server's 400)."""
from __future__ import annotations

import json

import pytest

from localllm.chat.messages import (
    MAX_TOOLS, normalise_messages, parse_tools, template_kwargs, tool_dicts,
)
from localllm.chat.types import ToolChoice, ToolChoiceMode, ToolSpec
from localllm.types import InvalidParam

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
LOOP = [
    {"role": "developer", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Paris?"}]},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    {"role": "assistant", "content": "Sunny."},
]


def test_a_tool_loop_is_normalised_as_templates_expect():
    out = normalise_messages(LOOP)
    assert out == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18 C", "tool_call_id": "call_1", "name": "get_weather"},
        {"role": "assistant", "content": "Sunny."},
    ]
    assert "tool_calls" not in out[4] and "tool_call_id" not in out[1]  # templates test `is defined`
    assert normalise_messages(out) == out  # idempotent: adapters may hand over normalised messages


def test_legacy_function_call_and_function_messages_map_to_tool_calls():
    out = normalise_messages([
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": "{}"}},
        {"role": "function", "name": "get_weather", "content": "18 C"},
    ])
    assert out[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {}}
    assert out[2] == {"role": "tool", "content": "18 C", "tool_call_id": out[1]["tool_calls"][0]["id"],
                      "name": "get_weather"}


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"x": value}
    return value


def bad_loop(**changes) -> list[dict]:
    call = {**CALL, **changes.pop("call", {})}
    function = {**CALL["function"], **changes.pop("function", {})}
    return [LOOP[1], {"role": "assistant", "content": None, "tool_calls": [{**call, "function": function}]},
            {"role": "tool", "tool_call_id": changes.pop("tool_call_id", "call_1"), "content": "18 C"}]


@pytest.mark.parametrize("messages, words", [
    ([], "non-empty"),
    ("hi", "non-empty"),
    ([{"role": "robot", "content": "x"}], "role"),
    ([{"role": "user"}], "content is required"),
    ([{"role": "assistant", "content": None}], "content is required"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "only text parts"),
    ([{"role": "user", "content": 3}], "string or a list"),
    (bad_loop(tool_call_id="call_9"), "matches no tool call"),
    ([LOOP[1], {"role": "tool", "tool_call_id": "call_1", "content": "x"}], "matches no tool call"),
    ([LOOP[1], {"role": "tool", "content": "x"}], "tool_call_id is required"),
    (bad_loop(function={"arguments": "{not json"}), "not valid JSON"),
    (bad_loop(function={"arguments": "[1, 2]"}), "JSON object"),
    (bad_loop(function={"arguments": 3}), "JSON string"),
    (bad_loop(function={"arguments": "[" * 100_000 + "]" * 100_000}), "not valid JSON"),
    (bad_loop(function={"arguments": '{"x": NaN}'}), "not valid JSON"),
    (bad_loop(function={"arguments": {"y": {1, 2}}}), "not valid JSON"),
    (bad_loop(function={"arguments": nested(5000)}), "not valid JSON"),
    (bad_loop(function={"name": "bad name!"}), "function.name"),
    (bad_loop(call={"type": "code"}), "type function"),
    (bad_loop(call={"id": ""}), ".id"),
    ([{"role": "assistant", "content": None, "tool_calls": "x"}], "tool_calls must be a list"),
    ([{"role": "function", "name": "get_weather", "content": "x"}], "no earlier function_call"),
    ([{"role": "assistant", "content": None, "tool_calls": [CALL], "function_call": CALL["function"]}],
     "cannot both"),
])
def test_bad_messages_are_invalid_params(messages, words: str):
    with pytest.raises(InvalidParam, match=words) as refused:
        normalise_messages(messages)
    assert refused.value.param == "messages"


def test_tools_and_tool_choice():
    tools, choice, parallel = parse_tools({"tools": [WEATHER], "parallel_tool_calls": False})
    assert tools == [ToolSpec("get_weather", "Weather", WEATHER["function"]["parameters"])]
    assert choice == ToolChoice(ToolChoiceMode.AUTO) and parallel is False
    assert parse_tools({}) == ([], ToolChoice(ToolChoiceMode.NONE), True)
    assert parse_tools({"tools": [WEATHER], "tool_choice": "required"})[1].mode is ToolChoiceMode.REQUIRED
    assert parse_tools({"tools": [WEATHER], "tool_choice": "none"})[1].mode is ToolChoiceMode.NONE
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert parse_tools({"tools": [WEATHER], "tool_choice": named})[1] == ToolChoice(ToolChoiceMode.NAMED, "get_weather")
    bare = parse_tools({"tools": [{"type": "function", "function": {"name": "now"}}]})[0][0]
    assert bare == ToolSpec("now", "", {"type": "object", "properties": {}})
    assert tool_dicts([bare]) == [{"type": "function", "function": {"name": "now", "description": "",
                                                                    "parameters": {"type": "object", "properties": {}}}}]


def test_legacy_functions_and_function_call_are_mapped():
    tools, choice, _ = parse_tools({"functions": [WEATHER["function"]], "function_call": {"name": "get_weather"}})
    assert [t.name for t in tools] == ["get_weather"] and choice == ToolChoice(ToolChoiceMode.NAMED, "get_weather")
    assert parse_tools({"functions": [WEATHER["function"]], "function_call": "none"})[1].mode is ToolChoiceMode.NONE
    assert parse_tools({"functions": [WEATHER["function"]]})[1].mode is ToolChoiceMode.AUTO


def tool(name: str = "f", **function) -> dict:
    return {"type": "function", "function": {"name": name, **function}}


@pytest.mark.parametrize("body, param, words", [
    ({"tools": "x"}, "tools", "must be a list"),
    ({"tools": [tool(str(i)) for i in range(MAX_TOOLS + 1)]}, "tools", f"at most {MAX_TOOLS}"),
    ({"tools": [tool("bad name")]}, "tools", "name must match"),
    ({"tools": [tool("x" * 65)]}, "tools", "name must match"),
    ({"tools": [tool(), tool()]}, "tools", "not unique"),
    ({"tools": [{"type": "web_search"}]}, "tools", "type function"),
    ({"tools": [tool(parameters={"type": "array"})]}, "tools", "type object"),
    ({"tools": [tool(parameters=[1])]}, "tools", "type object"),
    ({"tools": [tool(description=3)]}, "tools", "description"),
    ({"tools": [tool(description="x" * 20_000)]}, "tools", "description"),
    ({"tools": [tool(parameters={"type": "object", "properties": {"x": {"enum": ["y" * 70_000]}}})]}, "tools",
     "larger than"),
    ({"tools": [tool()], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice",
     "not among the tools"),
    ({"tools": [tool()], "tool_choice": "always"}, "tool_choice", "must be one of"),
    ({"tools": [tool()], "tool_choice": {"name": "f"}}, "tool_choice", "must be one of"),
    ({"tool_choice": "required"}, "tool_choice", "no tools"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice", "not among"),
    ({"tools": [tool()], "parallel_tool_calls": "yes"}, "parallel_tool_calls", "boolean"),
    ({"tools": [tool()], "functions": [{"name": "f"}]}, "functions", "cannot both"),
    ({"functions": [{"name": "f"}], "function_call": {"name": "g"}}, "function_call", "not among"),
    ({"functions": [{"name": "f"}], "function_call": "required"}, "function_call", "must be one of"),
    ({"tools": [tool()], "tool_choice": "auto", "function_call": "auto"}, "function_call", "cannot both"),
])
def test_bad_tools_are_invalid_params(body: dict, param: str, words: str):
    with pytest.raises(InvalidParam, match=words) as refused:
        parse_tools(body)
    assert refused.value.param == param


def test_template_kwargs():
    assert template_kwargs({}) == {}
    assert template_kwargs({"chat_template_kwargs": {"enable_thinking": False}, "reasoning_effort": "low"}) == {
        "enable_thinking": False, "reasoning_effort": "low"}
    for bad in ({"chat_template_kwargs": {"messages": []}}, {"chat_template_kwargs": {"not-a-name": 1}},
                {"chat_template_kwargs": [1]}, {"chat_template_kwargs": {f"k{i}": 1 for i in range(40)}}):
        with pytest.raises(InvalidParam) as refused:
            template_kwargs(bad)
        assert refused.value.param == "chat_template_kwargs"
    with pytest.raises(InvalidParam) as refused:
        template_kwargs({"reasoning_effort": "extreme"})
    assert refused.value.param == "reasoning_effort"
    assert json.dumps(template_kwargs({"chat_template_kwargs": {"x": {"y": [1]}}})) == '{"x": {"y": [1]}}'
