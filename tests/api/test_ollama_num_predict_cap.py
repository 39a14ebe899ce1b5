"""Ollama's num_predict past the slot's room stops at the context's end, as Ollama does; OpenAI's
max_tokens past it stays a 400 (OpenAI's own answer)."""
from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.api.fake_model import api_config, api_server

HELLO = [{"role": "user", "content": "hi"}]


async def test_num_predict_is_a_cap_max_tokens_is_not(tmp_path: Path):
    async with api_server(api_config(tmp_path)) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        huge = 10**6
        chat = await http.post("/api/chat", json={"model": "scripted", "messages": HELLO, "stream": False,
                                                  "options": {"num_predict": huge}})
        assert chat.status == 200, await chat.text()
        assert (await chat.json())["done"] is True
        generate = await http.post("/api/generate", json={"model": "scripted", "prompt": "hi", "raw": True,
                                                          "stream": False, "options": {"num_predict": huge}})
        assert generate.status == 200, await generate.text()
        openai = await http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": huge})
        assert openai.status == 400 and (await openai.json())["error"]["param"] == "max_tokens"
