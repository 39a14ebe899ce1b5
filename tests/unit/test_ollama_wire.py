"""Ollama's /api bodies -> the chat path's OpenAI body, and results -> Ollama's fields (pure)."""
from __future__ import annotations

import json

import pytest

from localllm.chat.messages import MAX_CHAT_MESSAGES, MAX_TOOL_CALLS_PER_MESSAGE
from localllm.chat.types import ToolCall
from localllm.server.errors import ApiError
from localllm.server.ollama_wire import (
    Timings, chat_body, done_reason, generate_body, parse_options, raw_body, tool_calls,
)


def refused(fn, *args) -> ApiError:
    with pytest.raises(ApiError) as caught:
        fn(*args)
    assert caught.value.status == 400
    return caught.value


def test_options_map_to_sampling_fields_and_unknown_ones_are_ignored():
    options = parse_options({"num_predict": 12, "temperature": 0, "top_k": 40.0, "top_p": 0.9, "min_p": 0.05,
                             "repeat_penalty": 1.1, "seed": 7, "stop": ["\n"], "num_ctx": 100_000,
                             "mirostat": 0, "no_such_option": "anything"})
    assert options == {"max_tokens": 12, "temperature": 0.0, "top_k": 40, "top_p": 0.9, "min_p": 0.05,
                       "repeat_penalty": 1.1, "seed": 7, "stop": ["\n"]}
    assert parse_options({"num_predict": -1, "seed": -1}) == {}  # no limit; a random seed
    assert parse_options({"stop": "END"}) == {"stop": ["END"]}


@pytest.mark.parametrize("options", [
    {"temperature": "hot"}, {"top_k": True}, {"num_predict": "12"}, {"stop": [1]}, {"num_predict": 0},
    {"num_ctx": 0}, {"use_mmap": 1}, {"num_thread": "4"}, {"seed": 1e300},
])
def test_options_of_the_wrong_type_are_a_400_naming_options(options):
    error = refused(parse_options, options)
    assert error.param == "options" and f"options.{next(iter(options))}" in error.message
    assert error.body("ollama") == {"error": error.message}


def test_chat_body_maps_format_think_tools_keep_alive_and_defaults_to_streaming():
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    body = chat_body({"model": "gemma3-270m:latest", "messages": [{"role": "user", "content": "hi"}],
                      "format": "json", "think": "high", "tools": tools, "keep_alive": "5m",
                      "options": {"num_predict": 4}})
    assert body == {"model": "gemma3-270m", "stream": True, "max_tokens": 4, "keep_alive": "5m",
                    "response_format": {"type": "json_object"}, "tools": tools,
                    "chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "high",
                    "messages": [{"role": "user", "content": "hi"}]}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = chat_body({"model": "m", "messages": [], "format": schema, "think": False, "stream": False})
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}
    assert body["chat_template_kwargs"] == {"enable_thinking": False} and body["stream"] is False


@pytest.mark.parametrize("body", [
    {"messages": []},  # no model
    {"model": "m", "messages": "hi"},
    {"model": "m", "messages": [{"role": "robot", "content": "x"}]},
    {"model": "m", "messages": [{"role": "user", "content": "x", "images": ["aGVsbG8="]}]},
    {"model": "m", "messages": [{"role": "tool", "content": "42"}]},  # answers no call
    {"model": "m", "messages": [], "format": "yaml"},
    {"model": "m", "messages": [], "think": "very"},
    {"model": "m", "messages": [], "stream": "yes"},
    {"model": "m", "messages": [], "keep_alive": "forever"},
])
def test_bad_chat_bodies_are_400s(body):
    refused(chat_body, body)


def test_tool_history_gets_ids_and_results_answer_calls_by_name():
    body = chat_body({"model": "m", "messages": [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "time", "arguments": {}}}]},
        {"role": "tool", "content": "12:00", "tool_name": "time"},
        {"role": "tool", "content": "sunny"},
    ]})
    assistant, time_result, weather_result = body["messages"][1:]
    calls = assistant["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["weather", "time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"} and calls[0]["type"] == "function"
    assert len({c["id"] for c in calls}) == 2
    assert time_result == {"role": "tool", "content": "12:00", "tool_call_id": calls[1]["id"], "name": "time"}
    assert weather_result["tool_call_id"] == calls[0]["id"]


def test_message_and_call_counts_are_bounded_before_results_are_matched_to_calls():
    # Unbounded, N calls answered by N results cost N*N steps on the event loop (seconds at 4 MiB).
    too_many_calls = [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}] * (MAX_TOOL_CALLS_PER_MESSAGE + 1)}]
    assert "tool_calls" in refused(chat_body, {"model": "m", "messages": too_many_calls}).message
    too_many_messages = [{"role": "user", "content": "x"}] * (MAX_CHAT_MESSAGES + 1)
    assert "at most" in refused(chat_body, {"model": "m", "messages": too_many_messages}).message


def test_generate_maps_system_and_prompt_and_refuses_what_it_cannot_honour():
    # The ollama client sends suffix, system and template as "" when unset: empty is absent.
    body = generate_body({"model": "m", "prompt": "Why?", "system": "Be brief.", "suffix": "", "template": ""})
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]
    assert raw_body({"model": "m", "prompt": "<start>", "raw": True, "system": ""})["prompt"] == "<start>"
    for bad in ({"suffix": "end"}, {"template": "{{ .Prompt }}"}, {"context": [1, 2]}, {"images": ["aGk="]}):
        error = refused(generate_body, {"model": "m", "prompt": "x", **bad})
        assert error.param == next(iter(bad))
    refused(raw_body, {"model": "m", "prompt": "x", "system": "s"})


def test_replies_use_ollama_words_objects_and_nanoseconds():
    assert done_reason("tool_calls") == "stop" and done_reason("length") == "length" and done_reason(None) == "stop"
    assert tool_calls([ToolCall("call_1", "weather", '{"city": "Paris"}')]) == [
        {"id": "call_1", "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}}}]
    fields = Timings(total_s=1.5, load_s=0.0, prompt_s=0.25, generation_s=1.0, num_prompt_tokens=10,
                     num_generated_tokens=8).fields()
    assert fields == {"total_duration": 1_500_000_000, "load_duration": 0, "prompt_eval_count": 10,
                      "prompt_eval_duration": 250_000_000, "eval_count": 8, "eval_duration": 1_000_000_000}
