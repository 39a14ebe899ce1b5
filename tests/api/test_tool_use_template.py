"""A model file with a second, tool-use chat template (`tokenizer.chat_template.tool_use`, as
Hermes 2 Pro's GGUF carries): requests with tools render with it, others with the default; a
catalogue template replaces both."""
from __future__ import annotations

import time
from pathlib import Path

from localllm.compose import start_served
from localllm.models.registry import ModelSpec
from tests.api.fake_model import CHAT_TEMPLATE, ScriptedBackend, api_config

TOOL_USE = (Path(__file__).parents[1] / "fixtures" / "templates" /
            "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja").read_text()


class ToolUseBackend(ScriptedBackend):
    def metadata(self, key: str) -> str | None:
        return TOOL_USE if key == "tokenizer.chat_template.tool_use" else super().metadata(key)


async def served(tmp_path: Path, spec: ModelSpec | None):
    config = api_config(tmp_path, ctx=16384)  # one token per character: room for Hermes' long template
    return await start_served(ToolUseBackend(config.engine.ctx), config, name="hermes", path=Path("/m/h.gguf"),
                              spec=spec, identity="scripted:hermes", started_s=time.monotonic())


async def test_requests_with_tools_use_the_tool_use_template(tmp_path: Path):
    model = await served(tmp_path, None)
    try:
        assert model.tool_use_template == TOOL_USE
        assert model.template_source(tools=True) == TOOL_USE
        assert model.template_source(tools=False) == CHAT_TEMPLATE == model.chat_template
        assert model.template_family is None  # detected from the template
    finally:
        await model.engine.stop()


async def test_a_catalogue_template_replaces_both(tmp_path: Path):
    spec = ModelSpec(name="hermes", file="h.gguf", chat_template="{{ messages[0].content }}", template_family="hermes")
    model = await served(tmp_path, spec)
    try:
        assert model.tool_use_template is None and model.template_source(tools=True) == "{{ messages[0].content }}"
        assert model.template_family == "hermes"
    finally:
        await model.engine.stop()


async def test_the_chat_path_renders_requests_with_tools_with_the_variant(tmp_path: Path):
    import aiohttp

    from tests.serving import serving

    config = api_config(tmp_path, ctx=16384)
    model = await served(tmp_path, None)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    body = {"messages": [{"role": "user", "content": "hi"}]}
    try:
        async with serving(config, model) as server, aiohttp.ClientSession() as http:
            plain = await (await http.post(server.make_url("/apply-template"), json=body)).json()
            with_tools = await (await http.post(server.make_url("/apply-template"), json={**body, "tools": [tool]})).json()
    finally:
        await model.engine.stop()
    assert "function calling AI model" not in plain["prompt"]
    assert "function calling AI model" in with_tools["prompt"]
