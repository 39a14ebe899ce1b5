"""Model administration a client cannot abuse (issue 14, items 2, 6 and 11), on the real app
over the scripted backend (tests/api/fake_model.py): no llama.cpp, seconds."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from localllm.config import Config
from localllm.server.app import create_app
from localllm.server.state import MODEL_KEY
from tests.api.fake_model import api_config, scripted_loader

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


class Client:
    """A session on a fresh server, and the server's ModelManager to look at."""

    def __init__(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        self.server, self.http = server, http
        self.manager = server.app[MODEL_KEY]

    async def post(self, path: str, body: dict | str) -> tuple[int, dict]:
        data = body if isinstance(body, str) else json.dumps(body)
        response = await self.http.post(path, data=data, headers={"Content-Type": "application/json"})
        return response.status, await response.json()

    async def ready(self) -> int:
        return (await self.http.get("/ready")).status

    def loaded_refs(self) -> list[str]:
        return [m.ref for m in self.manager.models if m.loaded is not None]


async def start(config: Config, loader=None) -> AsyncIterator[Client]:
    server = TestServer(create_app(config, loader=loader or scripted_loader()), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
            client = Client(server, http)
            for _ in range(300):
                if await client.ready() == 200 or client.manager.error:
                    break
                await asyncio.sleep(0.01)
            yield client
    finally:
        await server.close()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    async for c in start(api_config(tmp_path, max_keep_alive_s=600, max_loaded_models=3)):
        yield c


# --- 14.2: the default model cannot be unloaded; a failed default load can be retried ---

async def test_unloading_the_default_model_is_refused_and_it_keeps_serving(client: Client):
    status, body = await client.post("/admin/models/unload", {"model": "scripted"})
    assert status == 409 and body["error"]["code"] == "model_is_default" and body["error"]["param"] == "model"
    assert await client.ready() == 200
    status, body = await client.post("/v1/chat/completions", CHAT)
    assert status == 200 and body["model"] == "scripted"
    status, _ = await client.post("/admin/models/load", {"model": "scripted"})
    assert status == 200


async def test_a_failed_default_load_is_retried_by_an_admin_load_and_ready_comes_back(tmp_path: Path):
    attempts: list[str] = []
    real = scripted_loader()

    async def fails_once(config: Config, on_progress=None):
        attempts.append(config.engine.model)
        if len(attempts) == 1:
            raise RuntimeError("the model file was still being copied")
        return await real(config, on_progress)

    async for client in start(api_config(tmp_path), fails_once):
        assert await client.ready() == 503 and client.manager.error
        status, body = await client.post("/admin/models/load", {"model": "scripted"})
        assert status == 200 and body["status"] == "loaded", body
        assert await client.ready() == 200
        assert (await client.post("/v1/completions", {"prompt": "x"}))[0] == 200
        assert attempts == ["scripted", "scripted"]


# --- 14.6: keep_alive is validated and clamped; loaded models are bounded ---

@pytest.mark.parametrize("raw", [
    '{"prompt": "x", "keep_alive": NaN}',
    '{"prompt": "x", "keep_alive": Infinity}',
    '{"prompt": "x", "keep_alive": -Infinity}',
    '{"prompt": "x", "keep_alive": "nanm"}',
    '{"prompt": "x", "keep_alive": "infh"}',
    '{"prompt": "x", "keep_alive": 1' + "0" * 400 + "}",
])
async def test_a_non_finite_keep_alive_is_a_400(client: Client, raw: str):
    status, body = await client.post("/v1/completions", raw)
    assert status == 400 and body["error"]["param"] == "keep_alive", body


@pytest.mark.parametrize("asked, kept", [(-1, 600.0), ("-1m", 600.0), (1e308, 600.0), (0, 30.0), ("5m", 300.0)])
async def test_a_request_keep_alive_is_clamped_to_the_operator_limits(client: Client, asked, kept: float):
    status, _ = await client.post("/v1/completions", {"prompt": "x", "model": "other", "keep_alive": asked})
    assert status == 200
    assert client.manager.find("other").keep_alive_s == kept


async def test_keep_alive_forever_cannot_pin_a_model_past_max_keep_alive(tmp_path: Path):
    async for client in start(api_config(tmp_path, max_keep_alive_s=1)):
        status, _ = await client.post("/v1/completions", {"prompt": "x", "model": "other", "keep_alive": -1})
        assert status == 200 and "other" in client.loaded_refs()
        for _ in range(100):  # the sweeper runs every second
            if "other" not in client.loaded_refs():
                break
            await asyncio.sleep(0.05)
        assert client.loaded_refs() == ["scripted"]


async def test_past_max_loaded_models_the_least_recently_used_idle_model_makes_room(client: Client):
    for ref in ["a", "b", "a"]:  # "b" is now the least recently used
        assert (await client.post("/v1/completions", {"prompt": "x", "model": ref}))[0] == 200
    assert client.loaded_refs() == ["scripted", "a", "b"]
    assert (await client.post("/v1/completions", {"prompt": "x", "model": "c"}))[0] == 200
    assert client.loaded_refs() == ["scripted", "a", "c"]
    assert (await client.post("/v1/completions", {"prompt": "x", "model": "b"}))[0] == 200
    assert client.loaded_refs() == ["scripted", "c", "b"]  # the default is never the one to go


async def test_when_every_loaded_model_is_busy_another_load_is_a_429(client: Client):
    for ref in ["a", "b"]:
        assert (await client.post("/v1/completions", {"prompt": "x", "model": ref}))[0] == 200
    a, b = (client.manager.find(ref).loaded for ref in ("a", "b"))
    with client.manager.lease(a), client.manager.lease(b):  # both serving a request
        response = await client.http.post("/v1/completions", json={"prompt": "x", "model": "c"})
        assert response.status == 429 and int(response.headers["Retry-After"]) > 0
        assert (await response.json())["error"]["param"] == "model"
        assert client.loaded_refs() == ["scripted", "a", "b"]
    assert (await client.post("/v1/completions", {"prompt": "x", "model": "c"}))[0] == 200


# --- 14.11: over HTTP, models are named, never located by path ---

@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    existing = tmp_path / "secret.gguf"
    existing.write_bytes(b"GGUF" + b"\0" * 64)  # a file the server can read, GGUF or not
    return {"existing": str(existing), "missing": str(tmp_path / "absent.gguf"),
            "system": "/etc/hostname", "relative": "../secret.gguf"}


def without_ref(error: dict, ref: str) -> dict:
    return {**error, "message": error["message"].replace(repr(ref), "REF")}


async def test_plan_answers_the_same_404_for_any_path_whether_or_not_it_exists(client: Client, files):
    answers = []
    for ref in files.values():
        response = await client.http.get("/v1/plan", params={"model": ref})
        assert response.status == 404, (ref, await response.text())
        answers.append(without_ref((await response.json())["error"], ref))
    assert all(answer == answers[0] for answer in answers) and answers[0]["code"] == "model_not_found"


async def test_generation_and_admin_answer_the_same_404_for_any_path(client: Client, files):
    for path, body in [("/v1/completions", {"prompt": "x"}), ("/admin/models/load", {}),
                       ("/v1/embeddings", {"input": "x"})]:
        answers = []
        for ref in files.values():
            status, reply = await client.post(path, {**body, "model": ref})
            assert status == 404, (path, ref, reply)
            answers.append(without_ref(reply["error"], ref))
        assert all(answer == answers[0] for answer in answers), (path, answers)
    assert client.loaded_refs() == ["scripted"]  # nothing was loaded from a path


async def test_plan_still_answers_for_registered_names(data_dir: Path, model_path: Path):
    config = Config.from_flat({"data_dir": str(data_dir), "model": "gemma3-270m", "parallel": 2, "ctx": 1024})

    async def never_load(config, on_progress=None):
        raise RuntimeError("no model needed for a plan")

    async for client in start(config, never_load):
        for params in ({"model": "gemma3-270m"}, {}):
            response = await client.http.get("/v1/plan", params=params)
            assert response.status == 200, await response.text()
            assert (await response.json())["model"] == "gemma3-270m"
        unknown = await client.http.get("/v1/plan", params={"model": "no-such-model"})
        assert unknown.status == 404
