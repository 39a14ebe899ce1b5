"""A model whose GGUF chat template Jinja cannot compile (the model file is untrusted; some
real templates use tags Jinja lacks, e.g. `{% generation %}`): chat requests get a 400 that
says to use /v1/completions, never a 500; completions still work."""
from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from localllm.compose import start_served
from localllm.config import Config
from localllm.server.app import create_app
from tests.api.fake_model import REPLY, ScriptedBackend, api_config

BROKEN = "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"


class BrokenTemplateBackend(ScriptedBackend):
    def metadata(self, key: str) -> str | None:
        return BROKEN if key == "tokenizer.chat_template" else super().metadata(key)


async def load(config: Config, on_progress=None):
    return await start_served(BrokenTemplateBackend(config.engine.ctx), config, name="broken",
                              path=Path("/models/broken.gguf"), spec=None, identity="scripted:broken",
                              started_s=time.monotonic())


@pytest.fixture
async def http(tmp_path: Path):
    loaded = await load(api_config(tmp_path))
    server = TestServer(create_app(api_config(tmp_path), loaded=loaded), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as session:
            yield session
    finally:
        await server.close()
        await loaded.engine.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_with_a_template_that_cannot_compile_is_a_400(http: aiohttp.ClientSession, stream: bool):
    for _ in range(2):  # the failure is not cached into a different answer
        response = await http.post("/v1/chat/completions",
                                   json={"messages": [{"role": "user", "content": "hi"}], "stream": stream})
        body = await response.json()
        assert response.status == 400, body
        assert body["error"]["param"] == "messages" and "/v1/completions" in body["error"]["message"]
    completion = await http.post("/v1/completions", json={"prompt": "x"})
    assert completion.status == 200 and (await completion.json())["choices"][0]["text"] == REPLY
