"""One turn of the conversation; the assistant's grows as chunks stream in."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class ChatMessage(Static):
    def __init__(self, role: str, body: str = "") -> None:
        super().__init__(classes=f"-{role}")
        self.role = role
        self.body = body
        self.border_title = "you" if role == "user" else "assistant"

    def on_mount(self) -> None:
        self._redraw()

    def append(self, piece: str) -> None:
        self.body += piece
        self._redraw()

    def _redraw(self) -> None:
        self.update(Text(self.body or "…"))
