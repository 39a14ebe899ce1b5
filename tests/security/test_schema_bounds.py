"""Issue 14 items 3, 23, 24 and issue 18 item 5: hostile response_format schemas against the real
app on loopback. Every bad schema is a 400 naming response_format, answered before any grammar
exists; the server keeps serving; a good schema still constrains the output; the grammar is built
off the event loop and parsed by llama.cpp once."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from localllm.config import Config
from localllm.engine.llama_backend import grammar as grammar_module
from tests.serving import served

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "Say hello."}]
BOMBS = [  # each used to build gigabytes of grammar on the event loop, or crash llama.cpp's parser
    {"type": "string", "minLength": 100_000_000},
    {"type": "string", "maxLength": 100_000_000},
    {"type": "string", "maxLength": 10_000_000},
    {"type": "array", "items": {"type": "integer"}, "maxItems": 100_000_000},
    {"type": "array", "items": {"type": "string"}, "minItems": 100_000_000},
    {"type": "object", "properties": {"a": {"type": "string", "maxLength": 50_000_000}}},
    {"type": "string", "pattern": "^a{0,100000000}$"},
]
BAD = [
    {"type": "foo"},
    {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "bogus"}}}}},
    {"type": "array", "items": {"type": ["string", "nope"]}},
    {"$ref": "#/$defs/missing"},
    {"type": "object", "properties": {"a": {"$ref": "#/definitions/a"}}},
    {"$ref": "https://example.com/schema.json"},
    {"type": "string", "pattern": "^(unclosed$"},
    {"type": "string", "pattern": "^[z-a]$"},
    {"type": "string", "pattern": "^\\d{3}$"},
    {"type": "string", "pattern": "^(a?){0,1000}$"},  # so ambiguous llama.cpp spent minutes per token
    {"type": "string", "maxLength": "10"},
    {"type": "string", "minLength": 5, "maxLength": 2},
    {"type": "array", "items": True},
    {"anyOf": []},
    {"enum": list(range(5000))},
]


@pytest.fixture(scope="module")
async def server(data_dir: Path, model_path: Path):
    config = Config.from_flat({"parallel": 2, "ctx": 2048, "threads": 2, "data_dir": str(data_dir)})
    async with served(config) as test_server:
        yield test_server


@pytest.fixture(scope="module")
async def http(server: TestServer):
    async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as session:
        yield session


def with_schema(schema: dict, **extra) -> dict:
    return {"messages": HELLO, "max_tokens": 8, "temperature": 0, **extra,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


async def assert_refused(http: aiohttp.ClientSession, body: dict) -> str:
    async with http.post("/v1/chat/completions", json=body) as response:
        payload = await response.json()
        assert response.status == 400, payload
    error = payload["error"]
    assert error["param"] == "response_format" and error["type"] == "invalid_request_error", error
    return error["message"]


async def assert_serving(http: aiohttp.ClientSession) -> None:
    async with http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 4, "temperature": 0}) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["choices"][0]["message"]["content"]


@pytest.mark.parametrize("schema", BOMBS, ids=lambda s: json.dumps(s)[:60])
async def test_repetition_bombs_are_refused_and_the_server_keeps_serving(http: aiohttp.ClientSession, schema: dict):
    message = await assert_refused(http, with_schema(schema))
    assert "10000" in message or "1000" in message  # names the bound that was passed
    await assert_serving(http)


@pytest.mark.parametrize("schema", BAD, ids=lambda s: json.dumps(s)[:60])
async def test_bad_schemas_are_400_naming_response_format(http: aiohttp.ClientSession, schema: dict):
    await assert_refused(http, with_schema(schema))


async def test_bad_response_format_shapes_are_400(http: aiohttp.ClientSession):
    for response_format in ({"type": "yaml"}, {"type": "json_schema"}, {"type": "json_schema", "json_schema": []},
                            "json", {"type": ["json_object"]}):
        await assert_refused(http, {"messages": HELLO, "response_format": response_format})
    async with http.post("/v1/completions", json={"prompt": "x", "response_format": {
            "type": "json_schema", "json_schema": {"schema": {"type": "foo"}}}}) as response:
        assert response.status == 400 and (await response.json())["error"]["param"] == "response_format"


async def test_a_schema_at_the_limits_is_accepted(http: aiohttp.ClientSession):
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 1000},
                                                        "maxItems": 1000}}, "required": ["tags"]}
    async with http.post("/v1/chat/completions", json=with_schema(schema, max_tokens=4)) as response:
        assert response.status == 200, await response.text()


async def test_a_valid_schema_still_constrains_the_output(http: aiohttp.ClientSession):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]},
                                               "count": {"type": "integer"}},
              "required": ["answer", "count"], "additionalProperties": False}
    body = with_schema(schema, max_tokens=64, cache=False)
    body["messages"] = [{"role": "user", "content": "Is the sky blue? Answer as JSON."}]
    async with http.post("/v1/chat/completions", json=body) as response:
        payload = await response.json()
        assert response.status == 200, payload
    choice = payload["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    reply = json.loads(choice["message"]["content"])
    assert set(reply) == {"answer", "count"} and reply["answer"] in ("yes", "no") and isinstance(reply["count"], int)


async def test_the_grammar_is_built_off_the_event_loop_and_parsed_once(http: aiohttp.ClientSession,
                                                                       monkeypatch: pytest.MonkeyPatch):
    loop_thread = threading.current_thread()  # the test server runs on this thread's event loop
    built_on: list[threading.Thread] = []
    parses: list[bytes] = []
    convert = grammar_module._Converter.format_grammar  # noqa: SLF001
    init_grammar = grammar_module.ll.llama_sampler_init_grammar

    def counting_convert(converter) -> str:
        built_on.append(threading.current_thread())
        return convert(converter)

    def counting_init(vocab, text: bytes, root: bytes):
        parses.append(text)
        return init_grammar(vocab, text, root)

    monkeypatch.setattr(grammar_module._Converter, "format_grammar", counting_convert)  # noqa: SLF001
    monkeypatch.setattr(grammar_module.ll, "llama_sampler_init_grammar", counting_init)
    schema = {"type": "object", "properties": {"word": {"type": "string", "maxLength": 7}}, "required": ["word"]}
    for _ in range(2):  # two requests of two choices each: one parse in all
        async with http.post("/v1/chat/completions", json=with_schema(schema, n=2, cache=False)) as response:
            assert response.status == 200, await response.text()
    assert built_on and loop_thread not in built_on
    assert len(parses) == 1


async def test_the_server_is_still_healthy(http: aiohttp.ClientSession):
    for schema in BOMBS + BAD:
        await assert_refused(http, with_schema(schema))
    await assert_serving(http)
    ready = await (await http.get("/ready")).json()
    assert ready["num_busy_slots"] == 0 and ready["num_waiting"] == 0, ready
