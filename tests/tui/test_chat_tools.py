"""The chat screen keeps a reply's reasoning (`delta.reasoning_content`, collapsed) and its tool calls
(`delta.tool_calls` fragments, one block per call) apart from its text, over real HTTP/SSE from a
scripted server."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from textual.widgets._collapsible import CollapsibleTitle

from tests.tui.conftest import screen_text, wait_for
from tui.app import LocalLLMApp
from tui.client import Client
from tui.messages import Connection
from tui.screens.chat import ChatScreen, ReplyStats
from tui.widgets.chat_message import ChatMessage
from tui.widgets.reasoning_block import ReasoningBlock
from tui.widgets.tool_call_block import ToolCallBlock

SIZE = (80, 30)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "qwen3", "choices": choices, **extra}


def call_fragment(index: int, **fields: Any) -> dict[str, Any]:
    fragment: dict[str, Any] = {"index": index}
    if "id" in fields:
        fragment.update(id=fields["id"], type="function")
    fragment["function"] = {k: fields[k] for k in ("name", "arguments") if k in fields}
    return {"tool_calls": [fragment]}


REASONING = [chunk({"role": "assistant", "content": ""}), chunk({"reasoning_content": "The user wants"}),
             chunk({"reasoning_content": " the weather in Paris and Rome."})]
ANSWER = [
    chunk({"content": "Let me check."}),
    chunk(call_fragment(0, id="call_abc123", name="get_weather", arguments="")),
    chunk(call_fragment(0, arguments='{"city": ')),
    chunk(call_fragment(0, arguments='"Paris"}')),
    chunk(call_fragment(1, id="call_def456", name="get_weather", arguments='{"city": "Rome", "unit": "C"}')),
    chunk({}, finish="tool_calls"),
    chunk(usage={"prompt_tokens": 20, "completion_tokens": 31, "total_tokens": 51}),
]


class ScriptedServer:
    """/v1/models and a streaming /v1/chat/completions that sends REASONING, waits for `release`, then ANSWER."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.bodies: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "qwen3", "object": "model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.json())
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in REASONING:
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await self.release.wait()
        for event in ANSWER:
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.fixture()
async def scripted():
    script = ScriptedServer()
    server = TestServer(script.app(), host="127.0.0.1")
    await server.start_server()
    yield script, str(server.make_url("/")).rstrip("/")
    script.release.set()
    await server.close()


async def test_reasoning_collapses_and_tool_calls_get_their_own_blocks(scripted, snapshot):
    script, url = scripted
    app = LocalLLMApp(Client(url), poll=False)
    async with app.run_test(size=SIZE) as pilot:
        app.connection = Connection("connected", "http://127.0.0.1:8080")  # shown: fixed for the snapshot
        await pilot.press("f3")
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        await wait_for(pilot, lambda: screen.selected_model() == "qwen3", "the model in the picker")
        await pilot.press(*"Weather?", "enter")
        reply = list(screen.query(ChatMessage))[-1]

        # while it thinks: one dim line with the latest words, the reasoning itself folded away
        await wait_for(pilot, lambda: "thinking · 9 words" in screen_text(app), "the live reasoning title")
        assert "…the weather in Paris and Rome." in screen_text(app)  # the title's preview of the latest words
        assert "The user wants" not in screen_text(app) and reply.body == ""
        assert reply.query_one(ReasoningBlock).collapsed

        script.release.set()
        await wait_for(pilot, lambda: screen.outcome == "done (tool_calls)", "the reply finishing")
        await pilot.pause()
        text = screen_text(app)
        assert "reasoning · 9 words" in text and "The user wants" not in text
        assert reply.body == "Let me check."  # no call JSON in the text
        blocks = list(reply.query(ToolCallBlock))
        assert [(b.call_id, b.function_name, json.loads(b.arguments)) for b in blocks] == [
            ("call_abc123", "get_weather", {"city": "Paris"}),
            ("call_def456", "get_weather", {"city": "Rome", "unit": "C"})]
        assert text.count("tool call · get_weather") == 2 and '"city": "Paris"' in text
        assert "31 tokens" in text
        screen._show_stats(ReplyStats(0.0, 0.05, 0.35, 9, 31), "done (tool_calls)")  # timings fixed for the snapshot
        await pilot.pause()
        snapshot(app, "chat-tools")

        await pilot.click(reply.query_one(ReasoningBlock).query_one(CollapsibleTitle))
        await pilot.pause()
        assert not reply.query_one(ReasoningBlock).collapsed
        assert "The user wants the weather in Paris and Rome." in screen_text(app)

        # the next request carries the reply's text only: no reasoning, no calls without results
        assert screen.history[-1] == {"role": "assistant", "content": "Let me check."}
        script.release.clear()
        script.release.set()
        await pilot.click("#prompt")  # the click on the reasoning title took the focus
        await pilot.press(*"Thanks", "enter")
        await wait_for(pilot, lambda: len(script.bodies) == 2, "the second request")
        assert script.bodies[1]["messages"][:3] == [
            {"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "Let me check."},
            {"role": "user", "content": "Thanks"}]


async def test_a_reply_of_only_a_tool_call_or_only_reasoning_is_kept(scripted):
    app = LocalLLMApp(Client(scripted[1]), poll=False)
    async with app.run_test(size=SIZE):
        message = ChatMessage("assistant")
        await app.screen.mount(message)
        message.add_tool_call({"index": 0, "id": "call_1", "function": {"name": "now", "arguments": "{}"}})
        message.add_tool_call("not a fragment")
        message.add_tool_call({"index": 0, "function": {"arguments": 7}})
        assert [(b.function_name, b.arguments) for b in message.query(ToolCallBlock)] == [("now", "{}")]
        assert not message.query_one(".message-text").display  # no "…" placeholder beside the call


async def test_reasoning_words_are_counted_piece_by_piece_and_arguments_parsed_when_complete(monkeypatch):
    """The reasoning title's word count is kept as pieces come (a word split across pieces
    counts once), not by splitting the whole text per piece; a call's arguments are parsed for
    display only when they may be complete, not with every fragment (both were quadratic)."""
    from textual.app import App

    class Host(App):
        def compose(self):
            yield ReasoningBlock()
            yield ToolCallBlock(0)

    async with Host().run_test(size=SIZE) as pilot:
        block = pilot.app.query_one(ReasoningBlock)
        for piece in ["Let", " me", " th", "ink", "\n\n", "about it.", " "]:
            block.append(piece)
        assert block.num_words == 5
        assert str(block.title) == "thinking · 5 words · …Let me think about it."
        block.finish()
        assert str(block.title) == "reasoning · 5 words"
        parsed = []
        original = json.loads
        monkeypatch.setattr(json, "loads", lambda text, **kw: parsed.append(text) or original(text, **kw))
        call = pilot.app.query_one(ToolCallBlock)
        for piece in ['{"city"', ': "Par', 'is"', "}"]:
            call.add({"function": {"arguments": piece}})
        assert parsed == ['{"city": "Paris"}']
        assert call.shown_arguments() == '{\n  "city": "Paris"\n}'
