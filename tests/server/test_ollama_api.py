"""The official `ollama` Python client against a real server on loopback: Ollama's /api/* over the
one request path, with keys, a loopback hub for pulls, and errors in Ollama's shape."""
from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import aiohttp
import numpy as np
import ollama
import pytest

from localllm.config import Config
from localllm.models.registry import load_catalogue
from tests.models.hub_server import HubServer
from tests.serving import served

pytestmark = pytest.mark.integration
KEY, ADMIN = "ollama-key", "ollama-admin"
MODEL = "gemma3-270m"
REPO, FILE = "test-org/gemma-gguf", "gemma-3-270m-q4_k_m.gguf"
HUB_REF = f"{REPO}/{FILE}"
HELLO = [{"role": "user", "content": "Say hello."}]
SHORT = {"num_predict": 8, "temperature": 0}


@pytest.fixture(scope="module")
def hub(model_path: Path) -> Iterator[HubServer]:
    with HubServer() as server:
        server.state.add(REPO, FILE, model_path, load_catalogue()[MODEL].sha256)
        yield server


@pytest.fixture(scope="module")
async def base_url(tmp_path_factory: pytest.TempPathFactory, model_path: Path, hub: HubServer):
    """A data dir of its own (pulls and deletes stay here), holding the bundled model's file."""
    data_dir = tmp_path_factory.mktemp("ollama-data")
    spec = load_catalogue()[MODEL]
    (data_dir / "models" / MODEL).mkdir(parents=True)
    (data_dir / "models" / MODEL / spec.file).symlink_to(model_path)
    config = Config.from_flat({"parallel": 2, "ctx": 4096, "threads": 2, "api_key": KEY, "admin_api_key": ADMIN,
                               "data_dir": str(data_dir), "hf_endpoint": hub.url, "model": MODEL})
    async with served(config) as server:
        yield str(server.make_url("")).rstrip("/")


def client(base_url: str, key: str = KEY) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=base_url, headers={"Authorization": f"Bearer {key}"})


async def test_chat_not_streamed_reports_ollama_fields(base_url: str):
    reply = await client(base_url).chat(model=MODEL, messages=HELLO, options=SHORT, stream=False)
    assert reply.model == MODEL and reply.message.role == "assistant" and reply.message.content
    assert reply.done is True and reply.done_reason in ("stop", "length")
    assert reply.prompt_eval_count > 0 and 1 <= reply.eval_count <= 8
    assert reply.total_duration > reply.eval_duration > 0 and reply.prompt_eval_duration > 0
    assert datetime.fromisoformat(reply.created_at.replace("Z", "+00:00")).tzinfo is not None


async def test_chat_streamed_sends_pieces_then_one_closing_line(base_url: str):
    parts = [part async for part in await client(base_url).chat(model=MODEL, messages=HELLO, options=SHORT,
                                                                 stream=True)]
    assert len(parts) >= 2 and [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.message.content or "" for p in parts).strip()
    last = parts[-1]
    assert last.done_reason in ("stop", "length") and last.eval_count >= 1 and last.total_duration > 0


async def test_chat_with_a_json_schema_format_answers_json(base_url: str):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    reply = await client(base_url).chat(model=MODEL, messages=[{"role": "user", "content": "Give a number."}],
                                        format=schema, options={"num_predict": 48, "temperature": 0})
    assert reply.done_reason == "stop"
    assert isinstance(json.loads(reply.message.content)["n"], int)


def get_weather(city: str) -> str:
    """The weather in a city.

    Args:
      city: the city's name
    """
    return "sunny"


async def test_python_function_tools_and_a_tool_result_round_trip(base_url: str):
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": "", "tool_calls": [
                   {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
               {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
    reply = await client(base_url).chat(model=MODEL, messages=history, tools=[get_weather], options=SHORT)
    assert reply.done and reply.message.role == "assistant"
    assert reply.message.content or reply.message.tool_calls
    for call in reply.message.tool_calls or []:  # the model may call again: then in Ollama's shape
        assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)


async def test_generate_templated_raw_and_streamed(base_url: str):
    api = client(base_url)
    templated = await api.generate(model=MODEL, prompt="Name a colour.", system="Answer in one word.",
                                   options=SHORT)
    assert templated.response and templated.done and templated.eval_count >= 1
    raw = await api.generate(model=MODEL, prompt="1, 2, 3,", raw=True, options={"num_predict": 6, "temperature": 0})
    assert raw.response and raw.done_reason in ("stop", "length")
    parts = [p async for p in await api.generate(model=MODEL, prompt="1, 2, 3,", raw=True, stream=True,
                                                   options={"num_predict": 6, "temperature": 0})]
    assert parts[-1].done and "".join(p.response for p in parts) == raw.response
    loaded = await api.generate(model=MODEL)  # no prompt: Ollama's preload
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""
    unloaded = await api.generate(model=MODEL, keep_alive=0)
    assert unloaded.done_reason == "unload" and MODEL in {m.model for m in (await api.ps()).models}  # default stays


async def test_embed_and_the_older_embeddings_route_share_one_path(base_url: str):
    api = client(base_url)
    both = await api.embed(model=MODEL, input=["hello", "world"])
    vectors = np.array(both.embeddings)
    assert vectors.shape[0] == 2 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert both.prompt_eval_count >= 2 and both.total_duration > 0
    single = await api.embeddings(model=MODEL, prompt="hello")
    assert np.allclose(single.embedding, vectors[0], atol=1e-5)
    short = await api.embed(model=MODEL, input="hello", dimensions=16)
    assert len(short.embeddings[0]) == 16 and np.isclose(np.linalg.norm(short.embeddings[0]), 1.0, atol=1e-4)


async def test_list_show_ps_and_version(base_url: str):
    api = client(base_url)
    listed = {m.model: m for m in (await api.list()).models}
    entry = listed[MODEL]
    assert entry.size > 100_000_000 and entry.details.format == "gguf" and entry.details.family == "gemma3"
    assert entry.details.quantization_level and entry.digest
    shown = await api.show(MODEL)
    assert shown.template and "completion" in shown.capabilities and "tools" in shown.capabilities
    assert shown.modelinfo["general.architecture"] == "gemma3" and shown.modelinfo["gemma3.context_length"] > 0
    running = {m.model: m for m in (await api.ps()).models}
    assert running[MODEL].context_length == 2048 and running[MODEL].expires_at is not None
    async with aiohttp.ClientSession() as http:  # probed by clients before they know any key
        async with http.get(f"{base_url}/api/version") as response:
            assert response.status == 200 and (await response.json())["version"]
        # Ollama clients' default address passes the Host check of a loopback bind (--port 11434)
        async with http.get(f"{base_url}/api/version", headers={"Host": "localhost:11434"}) as response:
            assert response.status == 200


async def test_pull_from_the_hub_lists_then_delete_removes(base_url: str, hub: HubServer):
    admin = client(base_url, ADMIN)
    progress = [p async for p in await admin.pull(HUB_REF, stream=True)]
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    downloads = [p for p in progress if p.total]
    assert downloads and downloads[-1].completed == downloads[-1].total == Path(hub.state.files[(REPO, FILE)].path).stat().st_size
    assert HUB_REF in {m.model for m in (await admin.list()).models}
    assert (await admin.pull(HUB_REF, stream=False)).status == "success"  # cached: verified again, no download
    assert (await admin.delete(HUB_REF)).status == "success"
    assert HUB_REF not in {m.model for m in (await admin.list()).models}
    with pytest.raises(ollama.ResponseError) as gone:
        await admin.delete(HUB_REF)
    assert gone.value.status_code == 404


async def test_a_pull_that_fails_mid_stream_ends_with_an_error_line(base_url: str):
    with pytest.raises(ollama.ResponseError) as failed:  # the client raises on an {"error"} line
        async for _ in await client(base_url, ADMIN).pull(f"{REPO}/missing.gguf", stream=True):
            pass
    assert "missing.gguf" in failed.value.error


async def test_pull_and_delete_need_the_admin_scope(base_url: str):
    with pytest.raises(ollama.ResponseError) as refused:
        await client(base_url).pull(HUB_REF, stream=False)
    assert refused.value.status_code == 403 and "admin" in refused.value.error
    with pytest.raises(ollama.ResponseError) as anonymous:
        await ollama.AsyncClient(host=base_url).list()
    assert anonymous.value.status_code == 401


@pytest.mark.parametrize(("call", "status", "words"), [
    (lambda api: api.chat(model=MODEL, messages=HELLO, options={"temperature": "hot"}), 400, "options.temperature"),
    (lambda api: api.chat(model="no-such-model", messages=HELLO), 404, "no-such-model"),
    (lambda api: api.chat(model=MODEL, messages=[{"role": "user", "content": "what is this?",
                                                  "images": ["aGVsbG8="]}]), 400, "images"),
    (lambda api: api.generate(model=MODEL, prompt="x", suffix="y"), 400, "suffix"),
    (lambda api: api.generate(model=MODEL, prompt="x", options={"num_predict": "many"}), 400, "num_predict"),
    (lambda api: api.show("no-such-model"), 404, "no-such-model"),
    (lambda api: api.embed(model="no-such-model", input="x"), 404, "no-such-model"),
])
async def test_bad_input_is_answered_in_ollamas_error_shape(base_url: str, call, status: int, words: str):
    with pytest.raises(ollama.ResponseError) as caught:
        await call(client(base_url))
    assert caught.value.status_code == status and words in caught.value.error


async def test_error_bodies_are_exactly_ollamas(base_url: str):
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as http:
        async with http.post(f"{base_url}/api/chat", json={"model": MODEL, "messages": HELLO,
                                                           "options": {"top_k": "forty"}}) as response:
            assert response.status == 400
            body = await response.json()
            assert list(body) == ["error"] and isinstance(body["error"], str)
