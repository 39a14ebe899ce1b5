"""Rendering without generating (/apply-template, count_tokens, input_tokens) holds a lease on the
model while a worker renders and tokenises, so keep-alive or an unload cannot free it under the worker."""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import aiohttp
import pytest

from localllm.server import chat_path
from localllm.server.state import MODEL_KEY
from tests.api.fake_model import api_config, api_server

BODY = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("path, body", [("/apply-template", BODY),
                                        ("/v1/messages/count_tokens", {**BODY, "model": "scripted"})])
async def test_the_model_is_leased_while_a_worker_renders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          path: str, body: dict):
    rendering, release = threading.Event(), threading.Event()
    prepare = chat_path._prepare_chat

    def gated(*args, **kwargs):
        rendering.set()
        release.wait(10)
        return prepare(*args, **kwargs)

    monkeypatch.setattr(chat_path, "_prepare_chat", gated)
    async with api_server(api_config(tmp_path)) as server, aiohttp.ClientSession() as http:
        model = server.app[MODEL_KEY].models[0]
        answer = asyncio.create_task(http.post(server.make_url(path), json=body))
        await asyncio.to_thread(rendering.wait, 10)
        assert model.in_flight == 1
        release.set()
        response = await answer
        assert response.status == 200, await response.text()
        assert model.in_flight == 0
