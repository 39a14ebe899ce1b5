"""Streaming output parsing: one choice's generated text -> OutputEvents (stdlib only, pure).

`OutputParser(family, parse_tools=..., starts_in_reasoning=...)`: `feed(text)` returns the events
the text so far decides, `close()` the rest. Any split of the same output into pieces gives the
same events once folded (the tests check every split).

Reasoning (families with think markers, or `starts_in_reasoning`), as llama.cpp's chat parser does:
- `<think>` counts only at the very start of the output (after whitespace); `</think>` ends it.
  Markers inside the content are content; call openers inside reasoning are reasoning.
- `starts_in_reasoning`: the prompt ended inside `<think>` (Qwen3, QwQ, DeepSeek-R1 templates), so
  the output is reasoning up to `</think>` (an output that starts with `</think>` has none).
- A reasoning block that never closes (the model ran out of tokens or stopped thinking without
  the marker) is all reasoning, as in llama.cpp (its issues 13812/13877): the content is empty.
- Whitespace at both ends of the reasoning, and between `</think>` and the content, is dropped.
- `parse_reasoning=False` (keep the raw text): the markers and reasoning stay in the content; with
  `starts_in_reasoning` the opener the prompt already wrote is put back in front.

Tool calls: per family, see calls.py, call_formats.py and reply_formats.py. With parse_tools False every opener
is plain text.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from localllm.chat.call_formats import HermesParser, MistralParser
from localllm.chat.calls import WS, CallParser, HeldText, partial_suffix
from localllm.chat.families import THINK_CLOSE, THINK_OPEN, Family
from localllm.chat.reply_formats import GenericParser, Llama3Parser
from localllm.chat.types import (
    OutputEvent,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallArguments,
    ToolCallStarted,
    ToolSpec,
)

_CALL_PARSERS = {"hermes": HermesParser, "llama3": Llama3Parser, "mistral": MistralParser, "generic": GenericParser}


def call_parser(family: Family, parse_tools: bool, tools: Sequence[ToolSpec] = ()) -> CallParser:
    if not parse_tools:
        return CallParser(family.arguments_key)
    parser = _CALL_PARSERS.get(family.name, GenericParser)(family.arguments_key)
    parser.schemas = {tool.name: tool.parameters for tool in tools}
    return parser


class OutputParser(HeldText):
    """Splits one choice's output into reasoning, text and tool calls as it streams."""

    def __init__(self, family: Family, *, parse_tools: bool, starts_in_reasoning: bool = False,
                 parse_reasoning: bool = True, tools: Sequence[ToolSpec] = ()) -> None:
        """`tools`: the request's tools, optional: their schemas type the values of formats that
        write arguments as text (Qwen3-Coder's XML); JSON formats do not need them."""
        self._calls = call_parser(family, parse_tools, tools)
        self._open = family.think_open or THINK_OPEN
        self._close = family.think_close or THINK_CLOSE
        self._closed = False
        self._events: list[OutputEvent] = []
        if not parse_reasoning or not (family.reasons or starts_in_reasoning):
            self._state = "content"
            self._buf = self._open if starts_in_reasoning else ""
        else:
            self._state = "reasoning" if starts_in_reasoning else "start"
        self._trim = self._state == "reasoning"
        """Drop whitespace at the start of the reasoning / of the content after it."""

    def feed(self, text: str) -> list[OutputEvent]:
        self._feed_steps(text)
        return self._take()

    def close(self) -> list[OutputEvent]:
        self._closed = True
        while self._step():
            pass
        self._events.extend(self._calls.close())
        return self._take()

    def _take(self) -> list[OutputEvent]:
        events, self._events = self._events, []
        return events

    def _step(self) -> bool:
        if self._state == "start":
            stripped = self._buf.lstrip(WS)
            if stripped.startswith(self._open):
                self._buf, self._state, self._trim = stripped[len(self._open):], "reasoning", True
                return True
            if self._open.startswith(stripped) and not self._closed:
                return False  # may still become the opener
            self._state, self._trim = "content", False
            return True
        if self._trim:  # the start of the reasoning, or of the content after it
            self._buf = self._buf.lstrip(WS)
            if not self._buf:
                return False
            self._trim = False
        if self._state == "reasoning":
            return self._step_reasoning()
        self._events.extend(self._calls.feed(self._buf))
        self._buf = ""
        return False

    def _step_reasoning(self) -> bool:
        i = self._buf.find(self._close)
        if i >= 0:
            _reasoning(self._events, self._buf[:i].rstrip(WS))
            self._buf, self._state, self._trim = self._buf[i + len(self._close):], "content", True
            return True
        if self._closed:  # never closed: all of it is reasoning
            text = self._buf.rstrip(WS)
        else:  # hold what may start the closer, and trailing whitespace that may end the reasoning
            text = self._buf[:len(self._buf) - partial_suffix(self._buf, self._close)].rstrip(WS)
        _reasoning(self._events, text)
        self._buf = self._buf[len(text):]
        return False


def _reasoning(events: list[OutputEvent], text: str) -> None:
    if text:
        events.append(ReasoningDelta(text))


def tool_calls(events: list[OutputEvent]) -> list[ToolCall]:
    """Fold a choice's events into its calls, in index order."""
    starts: dict[int, ToolCallStarted] = {}
    arguments: dict[int, list[str]] = {}
    for event in events:
        if isinstance(event, ToolCallStarted):
            starts[event.index] = event
            arguments.setdefault(event.index, [])
        elif isinstance(event, ToolCallArguments):
            arguments.setdefault(event.index, []).append(event.text)
    return [ToolCall(starts[i].id, starts[i].name, "".join(arguments[i])) for i in sorted(starts)]


@dataclass(slots=True)
class FoldedOutput:
    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


def fold(events: list[OutputEvent]) -> FoldedOutput:
    """The whole answer a choice's events make: content, reasoning and calls."""
    return FoldedOutput(
        content="".join(e.text for e in events if isinstance(e, TextDelta)),
        reasoning="".join(e.text for e in events if isinstance(e, ReasoningDelta)),
        tool_calls=tool_calls(events),
    )
