"""The Responses API's pure mappings: request body -> chat body, results and output events ->
Response objects and stream events, checked with the openai SDK's own types and stream state."""
from __future__ import annotations

import time

import pytest
from openai._models import construct_type_unchecked
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from localllm.chat.types import ReasoningDelta, TextDelta, ToolCall, ToolCallArguments, ToolCallStarted
from localllm.config import Config, ConfigError
from localllm.server import responses_store
from localllm.server.chat_call import ChoiceResult, Usage
from localllm.server.errors import ApiError
from localllm.server.responses_input import parse_request, with_history
from localllm.server.responses_output import StreamTranslator, output_items, response_object
from localllm.server.responses_store import ConversationTooLong, ResponseStore, StoredResponse

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def usage() -> Usage:
    return Usage(prompt_tokens=12, completion_tokens=5, cached_tokens=3)


def choice(content: str = "", reasoning: str | None = None, tool_calls: list[ToolCall] | None = None,
           finish_reason: str = "stop") -> ChoiceResult:
    """The chat path's own result type, as the route hands it over."""
    return ChoiceResult(0, content, reasoning, tool_calls or [], finish_reason)


def chat_body(body: dict, history: list[dict] | None = None) -> dict:
    return with_history(parse_request(body), history or [])


def test_string_input_instructions_and_fields_map_to_a_chat_body():
    chat = chat_body({"model": "m", "input": "Hi", "instructions": "Be brief.", "max_output_tokens": 20,
                      "temperature": 0, "top_p": 0.5, "reasoning": {"effort": "low"}, "stream": True})
    assert chat == {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "Hi"}],
                    "max_tokens": 20, "temperature": 0, "top_p": 0.5, "reasoning_effort": "low", "stream": True}


def test_items_map_to_messages_with_tool_calls_and_results():
    items = [
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in "},
                                                        {"type": "input_text", "text": "Paris?"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city":"Lyon"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
    ]
    messages = chat_body({"input": items})["messages"]
    call = lambda i, city: {"id": i, "type": "function",  # noqa: E731
                            "function": {"name": "get_weather", "arguments": f'{{"city":"{city}"}}'}}
    assert messages == [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [call("c1", "Paris"), call("c2", "Lyon")]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
    ]


def test_history_comes_before_the_new_input_and_instructions_first():
    history = [{"type": "message", "role": "user", "content": "My name is Ada."},
               {"type": "message", "role": "assistant", "status": "completed", "id": "msg_1",
                "content": [{"type": "output_text", "text": "Hello Ada.", "annotations": []}]}]
    messages = chat_body({"input": "What is my name?", "instructions": "Answer."}, history)["messages"]
    assert [m["content"] for m in messages] == ["Answer.", "My name is Ada.", "Hello Ada.", "What is my name?"]


def test_tools_tool_choice_and_text_format_map_to_chat_shapes():
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    chat = chat_body({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"},
                      "parallel_tool_calls": False,
                      "text": {"format": {"type": "json_schema", "name": "pick", "schema": schema, "strict": True}}})
    assert chat["tools"] == [{"type": "function", "function": {k: WEATHER[k] for k in ("name", "description",
                                                                                       "parameters")}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["parallel_tool_calls"] is False
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {"name": "pick", "schema": schema,
                                                                              "strict": True}}
    assert "response_format" not in chat_body({"input": "x", "text": {"format": {"type": "text"}}})
    assert chat_body({"input": "x", "tool_choice": "required"})["tool_choice"] == "required"


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"input": "x", "background": True}, "background", "background"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools", "web_search"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input", "files"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]}, "input", "images"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input", "item_reference"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input", "call_id"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input", "role"),
    ({"input": 5}, "input", "string"),
    ({"input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice", "tool_choice"),
    ({"input": "x", "text": {"format": {"type": "xml"}}}, "text", "json_schema"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens", "positive"),
    ({"input": "x", "store": "yes"}, "store", "boolean"),
    ({"input": "x", "metadata": {"k": 1}}, "metadata", "metadata"),
    ({"input": "x", "previous_response_id": ""}, "previous_response_id", "response id"),
    ({}, "input", "required"),
])
def test_bad_input_is_a_400_naming_the_field(body: dict, param: str, words: str):
    with pytest.raises(ApiError) as caught:
        chat_body(body)
    assert caught.value.status == 400 and caught.value.param == param and words in caught.value.message


ECHO = parse_request({"input": "x", "tools": [WEATHER], "metadata": {"a": "b"}}).echo


def test_whole_answers_validate_as_sdk_responses():
    calls = [ToolCall("call_1", "get_weather", '{"city":"Paris"}')]
    for result in (choice("Hello."), choice("\n", tool_calls=calls, finish_reason="tool_calls"),
                   choice("Part", reasoning="Thinking", finish_reason="length")):
        obj = response_object("resp_1", 1, "m", ECHO, status="completed", output=output_items(result), usage=usage())
        response = Response.model_validate(obj)  # strict: every required field, right types
        assert response.usage.input_tokens_details.cached_tokens == 3
    assert [i["type"] for i in output_items(choice("\n", tool_calls=calls))] == ["function_call"]
    assert output_items(choice("Part", finish_reason="length"))[0]["status"] == "incomplete"
    assert response.output_text == "Part" and response.tools[0].name == "get_weather"


def run_stream(events: list, finish: str = "stop") -> tuple[list[dict], ResponseStreamState]:
    translator = StreamTranslator("resp_1", 1, "m", ECHO)
    wire = translator.started()
    for event in events:
        wire += translator.feed(event)
    wire += translator.finished(finish, usage())
    state = ResponseStreamState(input_tools=[WEATHER], text_format=omit)  # the SDK's own checks
    for event in wire:
        state.handle_event(construct_type_unchecked(type_=ResponseStreamEvent, value=event))
    assert [e["sequence_number"] for e in wire] == list(range(len(wire)))
    return wire, state


def test_text_stream_follows_openais_event_sequence():
    wire, state = run_stream([TextDelta("Hel"), TextDelta("lo")])
    assert [e["type"] for e in wire] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert wire[6]["text"] == "Hello" and wire[0]["response"]["output"] == []
    final = Response.model_validate(wire[-1]["response"])
    assert final.output_text == "Hello" and final.status == "completed"
    assert state._completed_response.output_text == "Hello"


def test_tool_call_stream_drops_stray_whitespace_and_streams_arguments():
    wire, state = run_stream([TextDelta("\n"), ToolCallStarted(0, "call_1", "get_weather"),
                              ToolCallArguments(0, '{"city":'), ToolCallArguments(0, '"Paris"}')], "tool_calls")
    types = [e["type"] for e in wire]
    assert types[2:] == ["response.output_item.added", "response.function_call_arguments.delta",
                         "response.function_call_arguments.delta", "response.function_call_arguments.done",
                         "response.output_item.done", "response.completed"]
    item = wire[-1]["response"]["output"][0]
    assert (item["call_id"], item["name"], item["arguments"]) == ("call_1", "get_weather", '{"city":"Paris"}')
    assert Response.model_validate(wire[-1]["response"]).output[0].type == "function_call"


def test_reasoning_then_text_and_length_limit_end_incomplete():
    wire, _ = run_stream([ReasoningDelta("hmm"), TextDelta("An")], "length")
    assert [e["type"] for e in wire if "reasoning" in e["type"]] == ["response.reasoning_text.delta",
                                                                    "response.reasoning_text.done"]
    final = Response.model_validate(wire[-1]["response"])
    assert wire[-1]["type"] == "response.incomplete" and final.incomplete_details.reason == "max_output_tokens"
    assert [o.type for o in final.output] == ["reasoning", "message"] and final.output[1].status == "incomplete"


def test_empty_answer_is_still_one_message_and_failure_is_response_failed():
    wire, _ = run_stream([])
    assert Response.model_validate(wire[-1]["response"]).output[0].content[0].text == ""
    translator = StreamTranslator("resp_1", 1, "m", ECHO)
    wire = translator.started() + translator.feed(TextDelta("Hi")) + translator.failed("engine error")
    assert wire[-1]["type"] == "response.failed"
    failed = Response.model_validate(wire[-1]["response"])
    assert failed.status == "failed" and failed.error.message == "engine error"


def test_store_is_per_owner_bounded_and_survives_garbage(tmp_path):
    store = ResponseStore(tmp_path / "store", 2**20, 60.0)
    stored = StoredResponse({"id": "resp_1", "output": []}, [{"type": "message", "role": "user", "content": "x"}])
    assert store.put("alice", stored)
    assert store.get("alice", "resp_1") == stored
    assert store.get("bob", "resp_1") is None and not store.delete("bob", "resp_1")
    assert store.get("alice", "resp_2") is None
    assert not store.put("alice", StoredResponse({"id": "resp_big"}, [{"t": "x" * 2**19}]))  # > size/4
    assert store.delete("alice", "resp_1") and store.get("alice", "resp_1") is None
    off = ResponseStore(tmp_path / "off", 0, 60.0)
    assert not off.is_active and not off.put("alice", stored) and off.get("alice", "resp_1") is None
    store.close()


def _turn(number: int, text: str = "x") -> StoredResponse:
    return StoredResponse({"id": f"resp_{number}"}, [{"type": "message", "role": "user", "content": f"{text}{number}"}],
                          f"resp_{number - 1}" if number > 1 else None)


def test_conversation_walks_the_chain_within_its_owner_and_bounds(tmp_path, monkeypatch):
    store = ResponseStore(tmp_path / "store", 2**20, 60.0)
    for number in (1, 2, 3):
        assert store.put("alice", _turn(number))
    assert [item["content"] for item in store.conversation("alice", "resp_3")] == ["x1", "x2", "x3"]
    assert store.conversation("bob", "resp_3") is None
    assert store.put("bob", _turn(4))  # bob's turn naming alice's resp_3: its chain is unknown to bob
    assert store.conversation("bob", "resp_4") is None
    monkeypatch.setattr(responses_store, "MAX_CHAIN_TURNS", 2)
    with pytest.raises(ConversationTooLong):
        store.conversation("alice", "resp_3")
    monkeypatch.setattr(responses_store, "MAX_CHAIN_TURNS", 1024)
    monkeypatch.setattr(responses_store, "MAX_CHAT_MESSAGES", 2)
    with pytest.raises(ConversationTooLong):
        store.conversation("alice", "resp_3")
    store.close()


def test_an_owner_at_its_bound_loses_its_own_oldest_only(tmp_path):
    store = ResponseStore(tmp_path / "store", 2**20, 60.0, max_per_owner=3)
    assert all(store.put("bob", _turn(number, "b")) for number in (1, 2))
    assert all(store.put("alice", _turn(number)) for number in range(1, 8))
    assert [store.get("alice", f"resp_{n}") is not None for n in range(1, 8)] == [False] * 4 + [True] * 3
    assert store.get("bob", "resp_1") is not None and store.get("bob", "resp_2") is not None
    unbounded = ResponseStore(tmp_path / "unbounded", 2**20, 60.0, max_per_owner=0)
    assert all(unbounded.put("alice", _turn(number)) for number in range(1, 8))
    assert all(unbounded.get("alice", f"resp_{n}") is not None for n in range(1, 8))
    store.close()
    unbounded.close()


def test_per_key_bound_config_key(tmp_path, monkeypatch):
    assert Config.from_flat({}).server.responses_store_max_per_key == 1000
    (tmp_path / "c.toml").write_text("[server]\nresponses-store-max-per-key = 5\n")
    assert Config.load(tmp_path / "c.toml").server.responses_store_max_per_key == 5
    monkeypatch.setenv("LOCALLLM_RESPONSES_STORE_MAX_PER_KEY", "7")
    assert Config.load(tmp_path / "c.toml").server.responses_store_max_per_key == 7
    assert Config.load(overrides={"responses_store_max_per_key": 0}).server.responses_store_max_per_key == 0
    with pytest.raises(ConfigError, match="responses_store_max_per_key"):
        Config.from_flat({"responses_store_max_per_key": -1})


def test_continuing_a_conversation_renews_every_turn_of_it(tmp_path):
    """Each turn expires ttl after it was stored; a follow-up gives the whole chain a full ttl again,
    so a live conversation never loses its first turns while its last ones are fresh."""
    store = ResponseStore(tmp_path / "store", 2**20, 3600.0)
    for number in (1, 2):
        assert store.put("alice", _turn(number))
    first_key = responses_store._key("alice", "resp_1")
    _, stored_expiry = store._cache.get(first_key, expire_time=True)
    time.sleep(0.01)  # the clock must move for a later expiry to be told apart
    assert store.conversation("alice", "resp_2") is not None
    _, renewed_expiry = store._cache.get(first_key, expire_time=True)
    assert renewed_expiry > stored_expiry
    store.close()
