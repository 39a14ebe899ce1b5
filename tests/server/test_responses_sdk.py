"""The official openai SDK's Responses API (and models.retrieve, llama-server's small endpoints)
against a real server on loopback with the bundled model. Two keys: stored responses are per key."""
from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import openai
import pytest
from pydantic import BaseModel

from localllm.config import Config
from tests.serving import served

pytestmark = pytest.mark.integration
ALICE, BOB = "alice-secret", "bob-secret"
MODEL = "gemma3-270m"
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}
YES_NO = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
          "required": ["answer"], "additionalProperties": False}


class Answer(BaseModel):
    answer: str


@pytest.fixture(scope="module")
async def base_url(data_dir: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"alice:{ALICE}\nbob:{BOB}\n")
    config = Config.from_flat({"parallel": 2, "ctx": 8192, "threads": 2, "api_key_file": str(keys),
                               "data_dir": str(data_dir)})
    async with served(config) as server:
        yield str(server.make_url("/v1"))


@pytest.fixture(scope="module")
def alice(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=ALICE, max_retries=0)


@pytest.fixture(scope="module")
def bob(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=BOB, max_retries=0)


async def test_create_plain_and_with_instructions(alice: openai.AsyncOpenAI):
    plain = await alice.responses.create(model=MODEL, input="Say hello.", max_output_tokens=6, temperature=0)
    assert plain.object == "response" and plain.id.startswith("resp_") and plain.model == MODEL
    assert plain.status == "incomplete" and plain.incomplete_details.reason == "max_output_tokens"
    assert plain.output[0].type == "message" and plain.output_text
    assert plain.usage.output_tokens == 6 and plain.usage.input_tokens_details.cached_tokens >= 0
    told = await alice.responses.create(model=MODEL, input="Say hello.", instructions="Answer in French.",
                                        max_output_tokens=6, temperature=0)
    assert told.instructions == "Answer in French."
    assert told.usage.input_tokens > plain.usage.input_tokens  # the instructions are in the prompt


async def test_streaming_with_the_sdk_helper_and_json_schema(alice: openai.AsyncOpenAI):
    async with alice.responses.stream(model=MODEL, input="Is the sky blue? Answer yes or no.", temperature=0,
                                      max_output_tokens=40, text_format=Answer) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and deltas[-1].snapshot == final.output_text  # the helper accumulated every delta
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_parsed.answer in ("yes", "no") and final.status == "completed"
    assert final.usage.total_tokens == final.usage.input_tokens + final.usage.output_tokens
    # Stored before the stream's last event: a follow-up sent at once finds it.
    follow = await alice.responses.create(model=MODEL, previous_response_id=final.id, input="Why?",
                                          max_output_tokens=2, temperature=0)
    assert follow.usage.input_tokens > final.usage.input_tokens + final.usage.output_tokens


async def test_streamed_length_limit_ends_incomplete(alice: openai.AsyncOpenAI):
    stream = await alice.responses.create(model=MODEL, input="Tell a story.", max_output_tokens=5, temperature=0,
                                          stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        events[-1].response.output[0].content[0].text


async def test_text_format_json_schema(alice: openai.AsyncOpenAI):
    response = await alice.responses.create(
        model=MODEL, input="Is water wet? Reply in JSON.", temperature=0, max_output_tokens=40,
        text={"format": {"type": "json_schema", "name": "yes_no", "schema": YES_NO, "strict": True}})
    assert response.status == "completed" and json.loads(response.output_text)["answer"] in ("yes", "no")
    assert response.text.format.type == "json_schema"


async def test_previous_response_id_continues_the_conversation(alice: openai.AsyncOpenAI):
    first = await alice.responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=8, temperature=0)
    follow = await alice.responses.create(model=MODEL, previous_response_id=first.id, input="What is my name?",
                                          max_output_tokens=8, temperature=0)
    assert follow.previous_response_id == first.id
    # The same conversation sent in full, statelessly, renders the same prompt.
    history = [{"role": "user", "content": "My name is Ada."}, *[item.model_dump() for item in first.output],
               {"role": "user", "content": "What is my name?"}]
    full = await alice.responses.create(model=MODEL, input=history, max_output_tokens=8, temperature=0, store=False)
    assert follow.usage.input_tokens == full.usage.input_tokens
    assert follow.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert follow.usage.input_tokens_details.cached_tokens > 0  # the first turn's prompt was reused
    counted = await alice.responses.input_tokens.count(model=MODEL, previous_response_id=first.id,
                                                       input="What is my name?")
    assert counted.input_tokens == follow.usage.input_tokens
    third = await alice.responses.create(model=MODEL, previous_response_id=follow.id, input="Thanks.",
                                         max_output_tokens=4, temperature=0)
    assert third.usage.input_tokens > follow.usage.input_tokens + follow.usage.output_tokens  # a chain
    with pytest.raises(openai.NotFoundError):  # store=False: not kept
        await alice.responses.create(model=MODEL, previous_response_id=full.id, input="x", max_output_tokens=2)


async def test_retrieve_delete_and_other_keys_cannot_see_it(alice: openai.AsyncOpenAI, bob: openai.AsyncOpenAI):
    created = await alice.responses.create(model=MODEL, input="Hi.", max_output_tokens=3, temperature=0)
    fetched = await alice.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == created.output_text
    with pytest.raises(openai.NotFoundError):
        await bob.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError) as caught:
        await bob.responses.create(model=MODEL, previous_response_id=created.id, input="x", max_output_tokens=2)
    assert caught.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        await bob.responses.delete(created.id)
    await alice.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        await alice.responses.retrieve(created.id)


async def test_forced_function_tool(alice: openai.AsyncOpenAI):
    forced = {"model": MODEL, "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"},
              "temperature": 0, "max_output_tokens": 60}  # parallel_tool_calls left at OpenAI's default (true)
    called = await alice.responses.create(input="What is the weather in Paris?", **forced)
    assert [item.type for item in called.output] == ["function_call"] and called.status == "completed"
    call = called.output[0]
    assert call.name == "get_weather" and call.call_id and isinstance(json.loads(call.arguments)["city"], str)
    answer = await alice.responses.create(
        model=MODEL, previous_response_id=called.id, tools=[WEATHER], max_output_tokens=8, temperature=0,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}])
    assert answer.output and answer.usage.input_tokens > called.usage.input_tokens  # the call and its result
    async with alice.responses.stream(input="Weather in Rome?", **forced) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    assert final.output[0].type == "function_call" and json.loads(final.output[0].arguments)["city"]


async def test_models_retrieve(alice: openai.AsyncOpenAI):
    model = await alice.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    assert model.model_dump() in [m.model_dump() for m in (await alice.models.list()).data]
    with pytest.raises(openai.NotFoundError) as caught:
        await alice.models.retrieve("no-such-model")
    assert caught.value.body["code"] == "model_not_found" and "no-such-model" in caught.value.body["message"]


@pytest.mark.parametrize(("kwargs", "error", "param"), [
    ({"previous_response_id": "resp_unknown", "input": "x"}, openai.NotFoundError, "previous_response_id"),
    ({"input": [{"type": "computer_call_output", "call_id": "c", "output": {}}]}, openai.BadRequestError, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
     openai.BadRequestError, "input"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, openai.BadRequestError, "tools"),
    ({"input": "x", "background": True}, openai.BadRequestError, "background"),
    ({"input": "x", "model": "no-such-model"}, openai.NotFoundError, "model"),
    ({"input": "x", "temperature": 9}, openai.BadRequestError, "temperature"),
])
async def test_bad_input_in_openais_shape(alice: openai.AsyncOpenAI, kwargs: dict, error: type, param: str):
    with pytest.raises(error) as caught:
        await alice.responses.create(**{"model": MODEL, "max_output_tokens": 2, **kwargs})
    assert caught.value.body["param"] == param and caught.value.body["message"]
    assert set(caught.value.body) == {"message", "type", "param", "code"}


async def test_tokenize_pieces_and_apply_template_on_the_real_model(base_url: str):
    root = base_url.removesuffix("/v1")
    text = "Hello 𝔘 wörld"
    headers = {"Authorization": f"Bearer {ALICE}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        pieces = (await (await http.post(f"{root}/tokenize", json={"content": text, "with_pieces": True})).json())
        raw = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"])
                       for p in pieces["tokens"])
        assert raw == text.encode()  # byte pieces (lists) and text pieces concatenate to the text
        ids = [p["id"] for p in pieces["tokens"]]
        assert (await (await http.post(f"{root}/detokenize", json={"tokens": ids})).json()) == {"content": text}
        body = {"messages": [{"role": "user", "content": "Hi there"}]}
        prompt = (await (await http.post(f"{root}/apply-template", json=body)).json())["prompt"]
        assert "<start_of_turn>user" in prompt and "Hi there" in prompt and prompt.endswith("<start_of_turn>model\n")
