"""The model's reasoning (`delta.reasoning_content`): collapsed to one dim title line; Enter or a
click shows the text. The title says how much thinking there was, and while it streams, its latest words."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Collapsible, Static

PREVIEW_CHARS = 32


class ReasoningBlock(Collapsible):
    def __init__(self) -> None:
        self.text = ""
        self.streaming = True
        self._body = Static(classes="reasoning-text")
        super().__init__(self._body, title="thinking…", collapsed=True)

    def append(self, piece: str) -> None:
        self.text += piece
        self._body.update(Text(self.text))
        self._retitle()

    def finish(self) -> None:
        self.streaming = False
        self._retitle()

    def _retitle(self) -> None:
        num_words = len(self.text.split())
        if not self.streaming:
            self.title = f"reasoning · {num_words} words"
            return
        self.title = f"thinking · {num_words} words · …{latest_words(self.text, PREVIEW_CHARS)}"


def latest_words(text: str, max_chars: int) -> str:
    """The last whole words of `text` that fit in `max_chars` (the last word cut if it alone does not)."""
    words = text.split()
    shown: list[str] = []
    while words and len(" ".join([words[-1], *shown])) <= max_chars:
        shown.insert(0, words.pop())
    return " ".join(shown) if shown else (words[-1][-max_chars:] if words else "")
