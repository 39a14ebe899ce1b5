"""Pick a model, stream a conversation, see the reply's tokens/sec and TTFT, stop it mid-stream."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Select, Static

from tui.client import ServerError, ServerUnreachable
from tui.messages import Connection
from tui.snapshot import format_seconds
from tui.widgets.chat_message import ChatMessage
from tui.widgets.connection_bar import ConnectionBar


@dataclass
class ReplyStats:
    """Client-side timing of one streamed reply."""

    started_s: float = field(default_factory=time.monotonic)
    first_token_s: float | None = None
    last_token_s: float | None = None
    num_chunks: int = 0
    num_completion_tokens: int | None = None
    """From the usage chunk, when the server sends one."""

    def tokens(self) -> int:
        return self.num_completion_tokens if self.num_completion_tokens is not None else self.num_chunks

    def describe(self, outcome: str) -> str:
        parts = [outcome, f"{self.tokens()} tokens"]
        if self.first_token_s is not None:
            parts.append(f"TTFT {format_seconds(self.first_token_s - self.started_s)}")
        if self.first_token_s is not None and self.last_token_s and self.last_token_s > self.first_token_s:
            rate = max(self.tokens() - 1, 1) / (self.last_token_s - self.first_token_s)
            parts.append(f"{rate:.1f} tok/s")
        return " · ".join(parts)


def show_delta(reply: ChatMessage, delta: dict) -> bool:
    """Put one choice's delta on screen, each kind in its own place; True if it carried output."""
    reasoning, content = delta.get("reasoning_content"), delta.get("content")
    fragments = delta.get("tool_calls")
    if isinstance(reasoning, str) and reasoning:
        reply.append_reasoning(reasoning)
    if isinstance(content, str) and content:
        reply.append(content)
    for fragment in fragments if isinstance(fragments, list) else []:
        reply.add_tool_call(fragment)
    return bool(reasoning or content or fragments)


class ChatScreen(Screen):
    CSS_PATH = "../styles/chat.tcss"
    BINDINGS = [Binding("escape", "stop", "Stop"), Binding("ctrl+l", "clear", "New")]

    def __init__(self) -> None:
        super().__init__()
        self.history: list[dict[str, str]] = []
        self.models: list[str] = []
        """Model ids the server listed, once the connection is up."""
        self.streaming = False
        self.outcome = ""
        """How the last reply ended: "done (stop)", "stopped", "failed: ..."."""

    def compose(self) -> ComposeResult:
        yield ConnectionBar()
        with Horizontal(id="chat-head"):
            yield Select[str]([], prompt="model", id="model-select", allow_blank=True)
            yield Static("no reply yet", id="reply-stats")
        yield VerticalScroll(id="conversation")
        yield Input(placeholder="Message (Enter sends, Esc stops the reply)", id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        self.watch(self.app, "connection", self._connection_changed)
        self.query_one("#prompt", Input).focus()

    def _connection_changed(self, connection: Connection) -> None:
        if connection.is_up and not self.models:
            self.load_models()

    @work(exclusive=True, group="models")
    async def load_models(self) -> None:
        try:
            models = [m["id"] for m in await self.app.client.models()]
        except (ServerError, ServerUnreachable) as exc:
            self.query_one("#reply-stats", Static).update(f"cannot list models: {exc}")
            return
        self.models = models
        select = self.query_one("#model-select", Select)
        select.set_options([(m, m) for m in models])
        if models and select.is_blank():
            select.value = models[0]

    def selected_model(self) -> str | None:
        value = self.query_one("#model-select", Select).value
        return value if isinstance(value, str) else None

    @on(Input.Submitted, "#prompt")
    def send(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        model = self.selected_model()
        if not text or self.streaming:
            return
        if model is None:
            self.notify("No model to chat with yet.", severity="warning")
            return
        event.input.clear()
        self.history.append({"role": "user", "content": text})
        conversation = self.query_one("#conversation", VerticalScroll)
        reply = ChatMessage("assistant")
        conversation.mount_all([ChatMessage("user", text), reply])
        conversation.scroll_end(animate=False)
        self.streaming = True
        self.stream_reply(model, reply)

    @work(exclusive=True, group="reply")
    async def stream_reply(self, model: str, reply: ChatMessage) -> None:
        stats = ReplyStats()
        finish = None
        try:
            async for chunk in self.app.client.chat(model, list(self.history), max_tokens=self.app.max_tokens):
                for choice in chunk.get("choices") or []:
                    if show_delta(reply, choice.get("delta") or {}):
                        stats.last_token_s = time.monotonic()
                        stats.first_token_s = stats.first_token_s or stats.last_token_s
                        stats.num_chunks += 1
                    finish = choice.get("finish_reason") or finish
                if chunk.get("usage"):
                    stats.num_completion_tokens = chunk["usage"].get("completion_tokens")
                self._show_stats(stats, "streaming")
            self._finish(reply, stats, f"done ({finish or '?'})")
        except asyncio.CancelledError:
            self._finish(reply, stats, "stopped")
            raise
        except (ServerError, ServerUnreachable) as exc:
            self._finish(reply, stats, f"failed: {exc}")

    def _show_stats(self, stats: ReplyStats, outcome: str) -> None:
        self.query_one("#reply-stats", Static).update(stats.describe(outcome))
        self.query_one("#conversation", VerticalScroll).scroll_end(animate=False)

    def _finish(self, reply: ChatMessage, stats: ReplyStats, outcome: str) -> None:
        self.streaming = False
        self.outcome = outcome
        reply.finish()
        if reply.body or reply.reasoning_text or reply.tool_calls:
            # only the text goes back: reasoning is not resent (OpenAI's rule), and calls the
            # TUI cannot run would need tool results the next request cannot give
            self.history.append({"role": "assistant", "content": reply.body})
        else:
            self.history.pop()  # nothing came back: forget the question too, so roles keep alternating
        self._show_stats(stats, outcome)

    def action_stop(self) -> None:
        if self.streaming:
            self.workers.cancel_group(self, "reply")

    def action_clear(self) -> None:
        self.action_stop()
        self.history.clear()
        self.query_one("#conversation", VerticalScroll).remove_children()
        self.query_one("#reply-stats", Static).update("new conversation")
