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
        self.num_words = 0
        """Counted piece by piece: splitting the whole text per piece is quadratic in a long reasoning."""
        self._body = Static(classes="reasoning-text")
        super().__init__(self._body, title="thinking…", collapsed=True)

    def append(self, piece: str) -> None:
        continues_word = bool(self.text) and not self.text[-1].isspace() and bool(piece) and not piece[0].isspace()
        self.num_words += len(piece.split()) - continues_word
        self.text += piece
        self._body.update(Text(self.text))
        self._retitle()

    def finish(self) -> None:
        self.streaming = False
        self._retitle()

    def _retitle(self) -> None:
        if not self.streaming:
            self.title = f"reasoning · {self.num_words} words"
            return
        self.title = f"thinking · {self.num_words} words · …{latest_words(self.text, PREVIEW_CHARS)}"


def latest_words(text: str, max_chars: int) -> str:
    """The last whole words of `text` that fit in `max_chars` (the last word cut if it alone does not).
    Splits only the end of `text` (no more words than `max_chars` can fit), not all of it per piece."""
    words = text.rsplit(None, max_chars)[-max_chars:]
    shown: list[str] = []
    while words and len(" ".join([words[-1], *shown])) <= max_chars:
        shown.insert(0, words.pop())
    return " ".join(shown) if shown else (words[-1][-max_chars:] if words else "")
