"""One tool call in a reply (OpenAI `delta.tool_calls[i]` fragments): the function's name as the
title, its arguments as they stream, shown indented once they are complete JSON."""
from __future__ import annotations

import json
from typing import Any

from rich.text import Text
from textual.widgets import Static

MAX_SHOWN_CHARS = 4000


class ToolCallBlock(Static):
    def __init__(self, index: int) -> None:
        super().__init__(classes="tool-call")
        self.index = index
        self.call_id = ""
        self.function_name = ""
        self.arguments = ""

    def on_mount(self) -> None:
        self._redraw()

    def add(self, fragment: dict[str, Any]) -> None:
        """Merge one fragment: `id` and `function.name` come first, `function.arguments` in pieces."""
        function = fragment.get("function") if isinstance(fragment.get("function"), dict) else {}
        if isinstance(fragment.get("id"), str):
            self.call_id = fragment["id"]
        if isinstance(function.get("name"), str):
            self.function_name += function["name"]
        if isinstance(function.get("arguments"), str):
            self.arguments += function["arguments"]
        self._redraw()

    def shown_arguments(self) -> str:
        shown = self.arguments
        if shown.rstrip().endswith("}"):  # may be complete: parsing every fragment would be quadratic
            try:
                shown = json.dumps(json.loads(shown), indent=2, ensure_ascii=False)
            except (ValueError, RecursionError):
                pass
        return shown if len(shown) <= MAX_SHOWN_CHARS else shown[:MAX_SHOWN_CHARS] + "…"

    def _redraw(self) -> None:
        self.border_title = f"tool call · {self.function_name or '?'}"
        self.border_subtitle = self.call_id or None
        self.update(Text(self.shown_arguments() or "…"))
