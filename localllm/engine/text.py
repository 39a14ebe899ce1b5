"""Incremental detokenisation with stop strings, standard library only.

Token pieces are bytes; a UTF-8 character may span several tokens, and a stop
string may span several pieces. `TextStream` emits only text that is final:
whole characters, and nothing that could still turn out to start a stop string.
"""
from __future__ import annotations

import codecs


class TextStream:
    """Turns token pieces into emit-safe text for one request.

    Changes state on `push` and `flush`; owned by one request on the engine thread.
    """

    __slots__ = ("_decoder", "_held", "_stops", "matched")

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        # "replace" so a model that emits invalid UTF-8 yields U+FFFD, never an exception.
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._held = ""  # decoded text not yet emitted: it may begin a stop string
        self._stops = stops
        self.matched: str | None = None
        """The stop string that matched (the earliest in the text; the first listed at one position)."""

    @property
    def stopped(self) -> bool:
        """True once a stop string matched; later pushes emit nothing."""
        return self.matched is not None

    def push(self, piece: bytes) -> str:
        """Adds one token's bytes; returns the text that is now safe to emit."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(piece)
        if not self._stops:
            return text
        found = _earliest_stop(text, self._stops)
        if found is not None:
            cut, self.matched = found
            self._held = ""
            return text[:cut]
        keep = _longest_partial_stop(text, self._stops)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """Ends the stream: returns held text and any incomplete character (as U+FFFD)."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text


def _earliest_stop(text: str, stops: tuple[str, ...]) -> tuple[int, str] | None:
    """(position, stop string) of the earliest match; at one position, the first listed."""
    found = [(i, n) for n, i in enumerate(text.find(s) for s in stops) if i >= 0]
    if not found:
        return None
    position, n = min(found)
    return position, stops[n]


def _longest_partial_stop(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:size]):
                best = size
                break
    return best
