"""One turn of the conversation; the assistant's grows as chunks stream in: its reasoning
(collapsed), its text, and a block per tool call, each kept apart rather than mixed into the text."""
from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from tui.widgets.reasoning_block import ReasoningBlock
from tui.widgets.tool_call_block import ToolCallBlock

MAX_TOOL_CALLS = 64


class ChatMessage(Vertical):
    def __init__(self, role: str, body: str = "") -> None:
        super().__init__(classes=f"-{role}")
        self.role = role
        self.body = body
        self.border_title = "you" if role == "user" else "assistant"
        self.reasoning: ReasoningBlock | None = None
        self.tool_calls: dict[int, ToolCallBlock] = {}
        self._text = Static(classes="message-text")

    def compose(self) -> ComposeResult:
        yield self._text

    def on_mount(self) -> None:
        self._redraw()

    @property
    def reasoning_text(self) -> str:
        return self.reasoning.text if self.reasoning else ""

    def append(self, piece: str) -> None:
        self.body += piece
        self._end_reasoning()
        self._redraw()

    def append_reasoning(self, piece: str) -> None:
        if self.reasoning is None:
            self.reasoning = ReasoningBlock()
            self.mount(self.reasoning, before=self._text)
            self._redraw()  # the "…" placeholder goes; the text itself has not changed
        self.reasoning.append(piece)

    def add_tool_call(self, fragment: Any) -> None:
        """One `delta.tool_calls[i]` fragment; the call's block appears with its first fragment."""
        if not isinstance(fragment, dict):
            return
        index = fragment.get("index")
        index = index if isinstance(index, int) else max(self.tool_calls, default=0)
        block = self.tool_calls.get(index)
        if block is None:
            if len(self.tool_calls) >= MAX_TOOL_CALLS:
                return
            block = self.tool_calls[index] = ToolCallBlock(index)
            self.mount(block)
            self._redraw()
        self._end_reasoning()
        block.add(fragment)

    def finish(self) -> None:
        self._end_reasoning()

    def _end_reasoning(self) -> None:
        if self.reasoning is not None and self.reasoning.streaming:
            self.reasoning.finish()

    def _redraw(self) -> None:
        self._text.display = bool(self.body) or not (self.reasoning or self.tool_calls)
        self._text.update(Text(self.body or "…"))
