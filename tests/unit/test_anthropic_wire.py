"""Anthropic Messages <-> the chat path's OpenAI chat body and events: the pure mappings, and the
stream events fed through the anthropic SDK's own accumulator."""
from __future__ import annotations

import json

import pytest
from anthropic.lib.streaming._messages import accumulate_event

from localllm.chat.types import ReasoningDelta, TextDelta, ToolCall, ToolCallArguments, ToolCallStarted
from localllm.server.anthropic_events import MessageEvents, message_body, tool_input
from localllm.server.anthropic_wire import MAX_CONTENT_BLOCKS, chat_body
from localllm.server.chat_call import ChoiceResult, Usage
from localllm.server.errors import ApiError

BASE = {"model": "m", "max_tokens": 16}
WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def bad(body: dict, *, count_only: bool = False) -> str:
    with pytest.raises(ApiError) as caught:
        chat_body(body, count_only=count_only)
    assert caught.value.status == 400
    return caught.value.message


def test_plain_request_maps_sampling_fields_and_system_blocks():
    chat = chat_body({**BASE, "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
                      "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5, "top_p": 0.9, "top_k": 5,
                      "stop_sequences": ["END"], "stream": True, "metadata": {"user_id": "u"}})
    assert chat == {"model": "m", "max_tokens": 16, "temperature": 0.5, "top_p": 0.9, "top_k": 5, "stop": ["END"],
                    "stream": True, "messages": [{"role": "system", "content": "Be brief.\n\nBe kind."},
                                                 {"role": "user", "content": "hi"}]}


def test_max_tokens_is_required_except_for_counting():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert "max_tokens: Field required" in bad(body)
    assert "max_tokens" in bad({**body, "max_tokens": 0})
    assert "max_tokens" in bad({**body, "max_tokens": True})
    assert "max_tokens" not in chat_body(body, count_only=True)


def test_tool_use_and_tool_result_become_tool_calls_and_tool_messages():
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
            {"type": "text", "text": "And tomorrow?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_2", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": "no data",
                                      "is_error": True}]},
    ]
    chat = chat_body({**BASE, "messages": messages, "tools": [WEATHER],
                      "tool_choice": {"type": "any", "disable_parallel_tool_use": True}})
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city", "parameters": WEATHER["input_schema"]}}]
    assert chat["tool_choice"] == "required" and chat["parallel_tool_calls"] is False
    call = {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    assert chat["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "user", "content": "And tomorrow?"},
        {"role": "assistant", "content": None, "tool_calls": [{**call, "id": "toolu_2"}]},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no data"},
    ]


@pytest.mark.parametrize("choice, expected", [
    ({"type": "auto"}, {"tool_choice": "auto"}),
    ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "tool", "name": "get_weather"},
     {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    ({"type": "auto", "disable_parallel_tool_use": False}, {"tool_choice": "auto", "parallel_tool_calls": True}),
])
def test_tool_choice(choice: dict, expected: dict):
    chat = chat_body({**BASE, "messages": [{"role": "user", "content": "x"}], "tools": [WEATHER],
                      "tool_choice": choice})
    assert {k: chat[k] for k in expected} == expected


def test_consecutive_turns_of_one_role_are_combined():
    chat = chat_body({**BASE, "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                           {"role": "assistant", "content": "c"},
                                           {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}]})
    assert chat["messages"] == [{"role": "user", "content": "a\n\nb"}, {"role": "assistant", "content": "c\n\nd"},
                                {"role": "user", "content": "e"}]


def test_thinking_and_output_format():
    messages = [{"role": "user", "content": "x"}]
    assert chat_body({**BASE, "messages": messages, "thinking": {"type": "enabled", "budget_tokens": 1024}}
                     )["chat_template_kwargs"] == {"enable_thinking": True}
    assert chat_body({**BASE, "messages": messages, "thinking": {"type": "disabled"}}
                     )["chat_template_kwargs"] == {"enable_thinking": False}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    chat = chat_body({**BASE, "messages": messages,
                      "output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


@pytest.mark.parametrize("change, words", [
    ({"model": None}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "image blocks are not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "document"}]}]}, "document blocks are not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "bogus"}]}]}, "messages.0.content.0.type"),
    ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages.0.content.0"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}, "messages.0.content.0.text"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}]},
     "cannot be in a user message"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": "{}"}]}]},
     "messages.0.content.0.input"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]}, "tool_use_id"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                 "content": [{"type": "image"}]}]}]}, "image blocks"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "The answer is ("}]},
     "prefilling"),
    ({"system": [{"type": "image"}]}, "system.0"),
    ({"tools": [{"name": "a"}]}, "tools.0.input_schema"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "maybe"}}, "tool_choice.type"),
    ({"tool_choice": {"type": "any"}}, "needs tools"),
    ({"thinking": {"type": "sometimes"}}, "thinking.type"),
    ({"stop_sequences": "END"}, "stop_sequences"),
])
def test_bad_fields_are_400s_that_name_them(change: dict, words: str):
    body = {**BASE, "messages": [{"role": "user", "content": "hi"}], **change}
    assert words in bad(body)


def test_content_blocks_are_bounded():
    blocks = [{"type": "text", "text": "x"}] * (MAX_CONTENT_BLOCKS // 2 + 1)
    body = {**BASE, "messages": [{"role": "user", "content": blocks}, {"role": "assistant", "content": blocks}]}
    assert "content blocks" in bad(body)


def _usage(prompt_tokens: int = 10, completion_tokens: int = 4, cached_tokens: int = 3) -> Usage:
    return Usage(prompt_tokens, completion_tokens, cached_tokens)


def _result(content: str = "", reasoning: str | None = None, tool_calls: list | None = None, finish_reason: str = "stop",
            stop_sequence: str | None = None) -> ChoiceResult:
    """The chat path's own result type, as the route hands it over."""
    return ChoiceResult(0, content, reasoning, tool_calls or [], finish_reason, stop_sequence=stop_sequence)


def accumulated(events: list) -> dict:
    """What the anthropic SDK's MessageStream builds from our events (their JSON, as sent), without
    the null fields it adds."""
    snapshot, json_bufs = None, {}
    for name, payload in events:
        assert payload["type"] == name
        if name != "ping":
            snapshot = accumulate_event(event=json.loads(json.dumps(payload)), current_snapshot=snapshot,
                                        json_bufs=json_bufs)
    return snapshot.to_dict(exclude_none=True)


def without_nulls(body: dict) -> dict:
    return {k: v for k, v in body.items() if v is not None}


def test_streamed_events_accumulate_to_the_non_streamed_message():
    usage = _usage()
    stream = MessageEvents("msg_1", "m")
    events = stream.start(_usage(10, 0, 3))
    for event in [ReasoningDelta("think"), ReasoningDelta("ing"), TextDelta(""), TextDelta("Hel"), TextDelta("lo"),
                  ToolCallStarted(0, "call_a", "get_weather"), ToolCallArguments(0, '{"city": '),
                  ToolCallArguments(0, '"Paris"}'), ToolCallStarted(1, "call_b", "get_weather"),
                  ToolCallArguments(1, '{}')]:
        events += stream.feed(event)
    events += stream.finish("tool_calls", usage)
    assert [name for name, _ in events][:2] == ["message_start", "ping"]
    assert [name for name, _ in events][-2:] == ["message_delta", "message_stop"]
    assert [p["index"] for n, p in events if n == "content_block_start"] == [0, 1, 2, 3]
    assert [p["index"] for n, p in events if n == "content_block_stop"] == [0, 1, 2, 3]
    result = _result("Hello", "thinking", [ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
                                           ToolCall("call_b", "get_weather", "{}")], "tool_calls")
    expected = message_body("msg_1", "m", result, usage)
    assert accumulated(events) == without_nulls(expected)
    assert expected["stop_reason"] == "tool_use"
    assert expected["usage"] == {"input_tokens": 7, "output_tokens": 4, "cache_creation_input_tokens": 0,
                                 "cache_read_input_tokens": 3}
    assert [b["type"] for b in expected["content"]] == ["thinking", "text", "tool_use", "tool_use"]
    assert expected["content"][2]["input"] == {"city": "Paris"}


@pytest.mark.parametrize("finish, reason", [("stop", "end_turn"), ("length", "max_tokens")])
def test_an_empty_or_plain_answer_streams_like_it_answers(finish: str, reason: str):
    for texts in ([], ["a", "b"]):
        stream = MessageEvents("msg_2", "m")
        events = stream.start(_usage(5, 0, 0))
        for text in texts:
            events += stream.feed(TextDelta(text))
        events += stream.finish(finish, _usage(5, len(texts), 0))
        expected = message_body("msg_2", "m", _result("".join(texts), finish_reason=finish), _usage(5, len(texts), 0))
        assert accumulated(events) == without_nulls(expected) and expected["stop_reason"] == reason
        assert expected["content"] == [{"type": "text", "text": "".join(texts)}]


def test_an_empty_piece_opens_no_block():
    stream = MessageEvents("msg_5", "m")
    stream.start(_usage())
    assert stream.feed(TextDelta("")) == [] and stream.feed(ReasoningDelta("")) == []
    assert [name for name, _ in stream.feed(TextDelta("a"))] == ["content_block_start", "content_block_delta"]
    assert stream.feed(TextDelta("")) == []  # nor closes the open one


def test_a_stop_sequence_is_the_stop_reason():
    stream = MessageEvents("msg_3", "m")
    events = [*stream.start(_usage(5, 0, 0)), *stream.feed(TextDelta("Hi")), *stream.finish("stop", _usage(), "END")]
    expected = message_body("msg_3", "m", _result("Hi", stop_sequence="END"), _usage())
    assert (expected["stop_reason"], expected["stop_sequence"]) == ("stop_sequence", "END")
    assert accumulated(events) == without_nulls(expected)


@pytest.mark.parametrize("finish", ["stop", "tool_calls"])  # OpenAI says "stop" for a named tool_choice
def test_an_answer_with_calls_stops_for_tool_use(finish: str):
    stream = MessageEvents("msg_4", "m")
    events = [*stream.start(_usage()), *stream.feed(ToolCallStarted(0, "c", "f")),
              *stream.feed(ToolCallArguments(0, "{}")), *stream.finish(finish, _usage())]
    expected = message_body("msg_4", "m", _result("", tool_calls=[ToolCall("c", "f", "{}")], finish_reason=finish),
                            _usage())
    assert expected["stop_reason"] == "tool_use" and accumulated(events) == without_nulls(expected)
    cut = message_body("msg_4", "m", _result("", tool_calls=[ToolCall("c", "f", '{"a"')], finish_reason="length"),
                       _usage())
    assert cut["stop_reason"] == "max_tokens"


def test_tool_input_guards_unreadable_arguments():
    assert tool_input('{"a": 1}') == {"a": 1}
    assert tool_input("") == {} and tool_input("[1]") == {} and tool_input("{oops") == {}
