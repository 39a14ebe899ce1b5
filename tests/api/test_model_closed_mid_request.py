"""A model unloaded while a worker tokenises or embeds for a request: llama_backend's guard
raises BackendClosed (a BackendError) in that worker. The request gets a 503 the client may
retry (model_not_ready, Retry-After), never a 500 with a traceback."""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import pytest

from localllm.compose import start_served
from localllm.engine.errors import BackendError
from tests.api.fake_model import ScriptedBackend, api_config
from tests.serving import serving


class Closed(BackendError):
    """Stands in for llama_backend.lifetime.BackendClosed (importing it would load llama.cpp)."""


class ClosingBackend(ScriptedBackend):
    """Answers normally until `is_closing`; then every call from a worker thread is refused."""

    is_closing = False

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        if self.is_closing:
            raise Closed("the model is closed")
        return super().tokenize(text, add_special=add_special, parse_special=parse_special)

    def embed(self, inputs: Sequence[Sequence[int]]) -> list:
        if self.is_closing:
            raise Closed("the model is closing")
        return super().embed(inputs)


@pytest.fixture
async def served(tmp_path: Path):
    config = api_config(tmp_path)
    backend = ClosingBackend(config.engine.ctx)
    loaded = await start_served(backend, config, name="m", path=Path("/models/m.gguf"), spec=None,
                                identity="scripted:m", started_s=time.monotonic())
    try:
        async with serving(config, loaded) as server, \
                aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
            yield http, backend
    finally:
        await loaded.engine.stop()


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/completions", {"prompt": "hi"}),
    ("/v1/embeddings", {"input": "hi"}),
    ("/v1/embeddings", {"input": [1, 2, 3]}),
])
async def test_a_model_closed_under_a_request_is_a_503(served, path: str, body: dict):
    http, backend = served
    assert (await http.post(path, json=body)).status == 200
    backend.is_closing = True
    response = await http.post(path, json=body)
    payload = await response.json()
    assert response.status == 503, payload
    assert payload["error"]["code"] == "model_not_ready" and response.headers["Retry-After"]
