"""The chat path's answers -> Anthropic's Messages API: the message body and the stream's events.

Pure (no aiohttp). Events are (name, payload) pairs, sent as `event: name` + `data: payload`: the
order and fields are what the anthropic SDK's MessageStream accumulates (message_start first,
content blocks opened, filled and closed one at a time, then message_delta and message_stop).
"""
from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from localllm.chat.calls import loads_or_none
from localllm.chat.types import ReasoningDelta, TextDelta, ToolCallArguments, ToolCallStarted
from localllm.server.errors import ApiError

if TYPE_CHECKING:
    from localllm.chat.types import OutputEvent, ToolCall
    from localllm.server.chat_path import ChoiceResult, Usage

Event = tuple[str, dict]


def message_id() -> str:
    return "msg_" + uuid.uuid4().hex


def stop_reason(finish_reason: str | None, stop_sequence: str | None = None, has_tool_calls: bool = False) -> str:
    """The chat path's finish reason (OpenAI's words) in Anthropic's: an answer with calls is tool_use
    even where OpenAI says "stop" (a named tool_choice), unless max_tokens cut it."""
    if finish_reason == "length":
        return "max_tokens"
    if has_tool_calls or finish_reason == "tool_calls":
        return "tool_use"
    return "end_turn" if stop_sequence is None else "stop_sequence"


def usage_body(usage: Usage) -> dict:
    """Anthropic counts prompt tokens read from a cache apart: input_tokens + cache_read_input_tokens
    is the whole prompt (here the prefix cache's reuse, or all of it on a response-cache hit)."""
    return {"input_tokens": usage.prompt_tokens - usage.cached_tokens, "output_tokens": usage.completion_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": usage.cached_tokens}


def tool_input(arguments: str) -> dict:
    """A call's arguments JSON text as tool_use's `input` object ({} if the text is not one: the
    parser only reports calls whose arguments it could read, so this is a guard)."""
    value = loads_or_none(arguments) if arguments else {}
    return value if isinstance(value, dict) else {}


def tool_use_block(call: ToolCall) -> dict:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(call.arguments)}


def message_body(msg_id: str, model: str, result: ChoiceResult, usage: Usage) -> dict:
    """The non-streamed answer."""
    content: list[dict] = []
    if result.reasoning:
        content.append({"type": "thinking", "thinking": result.reasoning, "signature": ""})
    if result.content or not result.tool_calls:
        content.append({"type": "text", "text": result.content})
    content.extend(tool_use_block(call) for call in result.tool_calls)
    return {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop_reason(result.finish_reason, result.stop_sequence, bool(result.tool_calls)),
            "stop_sequence": result.stop_sequence, "usage": usage_body(usage)}


def error_event(message: str, status: int) -> Event:
    """A failure after the stream began: Anthropic's error body as an `error` event."""
    return "error", ApiError(status, message).body("anthropic")


class MessageEvents:
    """Maps one choice's output events to Anthropic's stream events. Changes state on every call;
    one instance per streamed answer."""

    def __init__(self, msg_id: str, model: str) -> None:
        self._msg_id = msg_id
        self._model = model
        self._index = -1
        """The open (or last) content block's index."""
        self._open: str | None = None
        """Which kind of block is open: text, thinking, tool_use, or None."""
        self._has_tool_calls = False

    def start(self, usage: Usage) -> list[Event]:
        message = {"id": self._msg_id, "type": "message", "role": "assistant", "model": self._model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": usage_body(usage)}
        return [("message_start", {"type": "message_start", "message": message}), ("ping", {"type": "ping"})]

    def feed(self, event: OutputEvent) -> list[Event]:
        if isinstance(event, (TextDelta, ReasoningDelta)) and not event.text:
            return []  # an empty piece opens nothing
        if isinstance(event, TextDelta):
            return self._delta("text", {"type": "text", "text": ""}, {"type": "text_delta", "text": event.text})
        if isinstance(event, ReasoningDelta):
            return self._delta("thinking", {"type": "thinking", "thinking": "", "signature": ""},
                               {"type": "thinking_delta", "thinking": event.text})
        if isinstance(event, ToolCallStarted):  # always a new block, even right after another call
            self._has_tool_calls = True
            block = {"type": "tool_use", "id": event.id, "name": event.name, "input": {}}
            return [*self._close(), *self._open_block("tool_use", block)]
        if isinstance(event, ToolCallArguments) and self._open == "tool_use" and event.text:
            return [self._content_delta({"type": "input_json_delta", "partial_json": event.text})]
        return []

    def finish(self, finish_reason: str, usage: Usage, stop_sequence: str | None = None) -> list[Event]:
        """Closes the open block; the stop reason and the final usage (cumulative counts)."""
        reason = stop_reason(finish_reason, stop_sequence, self._has_tool_calls)
        delta = {"stop_reason": reason, "stop_sequence": stop_sequence}
        empty = self._open_block("text", {"type": "text", "text": ""}) if self._index < 0 else []  # as message_body
        ending = {"type": "message_delta", "delta": delta, "usage": usage_body(usage)}
        return [*empty, *self._close(), ("message_delta", ending), ("message_stop", {"type": "message_stop"})]

    def _delta(self, kind: str, block: dict, delta: dict) -> list[Event]:
        opened = [] if self._open == kind else [*self._close(), *self._open_block(kind, block)]
        return [*opened, self._content_delta(delta)]

    def _open_block(self, kind: str, block: dict) -> list[Event]:
        self._index += 1
        self._open = kind
        return [("content_block_start", {"type": "content_block_start", "index": self._index, "content_block": block})]

    def _content_delta(self, delta: dict) -> Event:
        return "content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta}

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        self._open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._index})]
