"""Families whose reply is JSON from its first character, as streaming parsers (see calls.py for
the shared rules):

- llama3:  the reply (after optional whitespace, `<|python_tag|>`, a ```` ```json ```` fence) is a
           JSON call object `{"name": N, "parameters": {...}}` (or a list of them); several may
           follow, separated by whitespace or `;`. A reply that starts otherwise is text.
- generic: the reply is one JSON object `{"tool_calls": [{"name", "arguments"}]}`,
           `{"tool_call": {...}}` or `{"response": "text"}` (the response becomes content); or
           text followed by `{"tool_calls": [...]}`.
"""
from __future__ import annotations

import json

from localllm.chat.calls import WS, JsonScan, StreamParser, loads_or_none

PYTHON_TAG = "<|python_tag|>"
CALLS_OPENER = '{"tool_calls"'
FENCE = "```"
MAX_FENCE_CHARS = 16


class JsonReplyParser(StreamParser):
    """A family whose reply is JSON from its first character (llama3, generic)."""

    separators = WS
    text_state = "plain"
    """Where text goes once the reply is not (or no longer) JSON calls."""

    def __init__(self, arguments_key: str) -> None:
        super().__init__(arguments_key)
        self._state = "start"
        self._scan = JsonScan()
        self._fenced = False

    def _step(self) -> bool:
        if self._state == "plain":
            if self._skip_gap():
                self._text(self._buf)
                self._buf = ""
            return False
        if self._state == "start":
            return self._step_start()
        if self._state == "text":
            return self._step_text()
        if self._state == "fence":
            return self._step_fence_close()
        end = self._scan_value()
        if end is None:
            return self._state == self.text_state
        if self._reply(loads_or_none(self._buf[:end])):
            self._emitted(end)
            self._state = "fence" if self._fenced else self._after_reply()
        else:
            self._give_back(end)
            self._state = self.text_state
        return True

    def _step_start(self) -> bool:
        if not self._skip_gap():
            return False
        stripped = self._buf.lstrip(self.separators if self.num_calls else WS)
        # into raw at once (given back with it if no call follows): a long run of separators is not rescanned
        self._raw, self._buf = self._raw + self._buf[:len(self._buf) - len(stripped)], stripped
        if not stripped:
            if self._closed:
                self._give_back(0)
                self._state = self.text_state
            return False
        for prefix in (self._fence_open, self._prefix):
            verdict = prefix(stripped)
            if verdict != "go":
                return verdict == "again"
        if stripped[0] == "{" or (stripped[0] == "[" and self.num_calls == 0):
            self._scan, self._state = JsonScan(), "object"
            return True
        self._give_back(0)
        self._state = self.text_state
        return True

    def _fence_open(self, stripped: str) -> str:
        """A Markdown fence (```` ``` ```` or ```` ```json ````) around the reply, as small models write."""
        if self._fenced or self.num_calls or not stripped.startswith("`"):
            return "go"
        newline = stripped.find("\n")
        if newline < 0:
            could_be = FENCE.startswith(stripped[:3]) and len(stripped) <= MAX_FENCE_CHARS
            return "wait" if could_be and not self._closed else "go"
        if not stripped.startswith(FENCE) or stripped[3:newline].strip().lower() not in ("", "json"):
            return "go"
        self._raw += stripped[:newline + 1]
        self._buf, self._fenced = stripped[newline + 1:], True
        return "again"

    def _step_fence_close(self) -> bool:
        stripped = self._buf.lstrip(WS)
        if len(stripped) < len(FENCE) and FENCE.startswith(stripped) and not self._closed:
            return False
        if stripped.startswith(FENCE):
            self._buf = stripped[len(FENCE):]
        self._fenced = False
        self._state = self._after_reply()
        return True

    def _prefix(self, stripped: str) -> str:
        """A prefix allowed before the JSON: "go" (none here), "again" (consumed one, or gave
        up and switched to plain text: step again) or "wait" (need more text)."""
        return "go"

    def _reply(self, value: object) -> bool:
        raise NotImplementedError

    def _step_text(self) -> bool:
        raise NotImplementedError

    def _after_reply(self) -> str:
        return self.text_state


class Llama3Parser(JsonReplyParser):
    separators = WS + ";"

    def __init__(self, arguments_key: str = "parameters") -> None:
        super().__init__(arguments_key)
        self._tagged = False

    def _prefix(self, stripped: str) -> str:
        if self._tagged:
            return "go"
        if stripped.startswith(PYTHON_TAG):
            self._raw += PYTHON_TAG
            self._buf, self._tagged = stripped[len(PYTHON_TAG):], True
            return "again"
        if PYTHON_TAG.startswith(stripped):
            if not self._closed:
                return "wait"
            self._give_back(len(self._buf))
            self._state = self.text_state
            return "again"
        return "go"

    def _reply(self, value: object) -> bool:
        return self.calls_in(value)

    def _after_reply(self) -> str:
        self._tagged = False
        return "start"


class GenericParser(JsonReplyParser):
    """The whole reply as one JSON object, or text followed by `{"tool_calls": [...]}` (the
    fallback writes earlier calls after their text that way, so models copy it)."""

    text_state = "text"

    def _step_text(self) -> bool:
        if not self._skip_gap() or not self._text_until(CALLS_OPENER):
            return False
        self._scan, self._state = JsonScan(), "object"
        return True

    def _reply(self, value: object) -> bool:
        if not isinstance(value, dict):
            return False
        if self._has_text or self.num_calls:  # after text: only the calls object is a call
            return list(value)[:1] == ["tool_calls"] and self.calls_in(value["tool_calls"])
        if "tool_calls" in value:
            return self.calls_in(value["tool_calls"])
        if "tool_call" in value:
            return isinstance(value["tool_call"], dict) and self.calls_in(value["tool_call"])
        if "response" in value:
            response = value["response"]
            self._text(response if isinstance(response, str) else json.dumps(response, ensure_ascii=False))
            return True
        return False
