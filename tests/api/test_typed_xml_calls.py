"""Qwen3-Coder / Qwen3.5 write call arguments as XML text; the served reply types each value by
the tool's schema ({"n": 3}, not {"n": "3"}), as the parser does when given the request's tools."""
from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from tests.api.fake_model import api_config, api_server, scripted_loader

TEMPLATE = (Path(__file__).parents[1] / "fixtures" / "templates" / "Qwen3-Coder.jinja").read_text()
REPLY = "<tool_call>\n<function=add>\n<parameter=n>\n3\n</parameter>\n</function>\n</tool_call>"
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}


async def test_xml_call_values_are_typed_by_the_tools_schema(tmp_path: Path):
    loader = scripted_loader(reply=REPLY, template=TEMPLATE)
    async with api_server(api_config(tmp_path, ctx=16384), loader=loader) as server, aiohttp.ClientSession() as http:
        response = await http.post(server.make_url("/v1/chat/completions"), json={
            "messages": [{"role": "user", "content": "add 3"}], "tools": [ADD], "max_tokens": 200})
        answer = await response.json()
    assert response.status == 200, answer
    call = answer["choices"][0]["message"]["tool_calls"][0]["function"]
    assert call["name"] == "add" and json.loads(call["arguments"]) == {"n": 3}
