"""Families whose calls start at a marker anywhere in the text, as streaming parsers (see calls.py
for the shared rules; reply_formats.py has the families whose reply is the JSON).

- hermes:  `<tool_call>{"name": N, "arguments": {...}}</tool_call>`, anywhere in the text, any number;
           Qwen3-Coder and Qwen3.5 write `<function=N><parameter=K>\nV\n</parameter></function>` inside.
- mistral: `[TOOL_CALLS][{"name": N, "arguments": {...}, "id": "abc123XYZ"}, ...]` (Nemo, Small 3.x)
           and `[TOOL_CALLS]N[ARGS]{...}` / `[TOOL_CALLS]N[CALL_ID]abc123XYZ[ARGS]{...}` (Devstral,
           Ministral 3, Mistral Small 3.2), anywhere in the text.
"""
from __future__ import annotations

import json
import re

from localllm.chat.calls import (
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    WS,
    JsonScan,
    StreamParser,
    call_from,
    loads,
    loads_many,
    loads_or_none,
)

XML_OPENER = "<function="
_NAME_RUN = re.compile(r"[A-Za-z0-9_.:-]*")
_ID_RUN = re.compile(r"[A-Za-z0-9_-]*")
_ARGS, _CALL_ID = "[ARGS]", "[CALL_ID]"
MAX_BRACKET_SPACE = 64
"""Whitespace waited for after a reply's first `[` before it is text (each wait rescans it)."""


class OpenerParser(StreamParser):
    """A family whose calls start with a marker anywhere in the text (hermes, mistral)."""

    opener = ""

    def __init__(self, arguments_key: str) -> None:
        super().__init__(arguments_key)
        self._state = "text"

    def _step(self) -> bool:
        if self._state == "text":
            return self._step_text()
        return self._step_call()

    def _step_call(self) -> bool:
        raise NotImplementedError

    def _step_text(self) -> bool:
        if not self._skip_gap() or not self._text_until(self.opener):
            return False
        self._raw, self._buf = self._raw + self.opener, self._buf[len(self.opener):]
        self._state = "open"
        return True

    def _finish(self, consumed: int, ok: bool) -> bool:
        if ok:
            self._emitted(consumed)
        else:
            self._give_back(consumed)
        self._state = "text"
        return True


class HermesParser(OpenerParser):
    opener, closer = "<tool_call>", "</tool_call>"

    def __init__(self, arguments_key: str = "arguments") -> None:
        super().__init__(arguments_key)
        self._scan_from = 0

    def _step_call(self) -> bool:
        if self._state == "open":  # prose that mentions the tag: no call, and no need to hold the rest
            body = self._buf.lstrip(WS)
            if not body or (len(body) < len(XML_OPENER) and XML_OPENER.startswith(body)):
                if not self._closed:
                    return False
            elif body[0] not in '{["' and not body.startswith(XML_OPENER):
                return self._finish(0, ok=False)
        self._state = "body"
        j = self._buf.find(self.closer, self._scan_from)
        if j >= 0 or self._closed or self._too_long():
            self._scan_from = 0
        if j >= 0:
            return self._finish(j + len(self.closer), self._block(self._buf[:j]))
        if self._closed:  # lenient: a complete call whose closer never came still counts
            return self._finish(len(self._buf), self._block(self._buf))
        if self._too_long():
            return self._finish(len(self._buf), ok=False)
        self._scan_from = max(0, len(self._buf) - len(self.closer) + 1)
        return False

    def _block(self, body: str) -> bool:
        if body.lstrip(WS).startswith(XML_OPENER):  # Qwen3-Coder / Qwen3.5 write XML inside the block
            calls = xml_calls(body, self.schemas)
            if calls:
                self._calls(calls, keep_ids=False)
            return bool(calls)
        values = loads_many(body)
        if not values:
            return False
        items: list[object] = []
        for value in values:
            items.extend(value if isinstance(value, list) else [value])
        return self.calls_in(items)


_XML_FUNCTION = re.compile(r"\s*<function=([^>\n]{1,256})>\n?(.*?)</function>\s*", re.DOTALL)
_XML_PARAMETER = re.compile(r"\s*<parameter=([^>\n]{1,256})>\n?(.*?)\n?</parameter>\s*", re.DOTALL)


def xml_calls(body: str, schemas: dict[str, dict]) -> list[tuple[str, str, str | None]] | None:
    """`<function=NAME><parameter=KEY>VALUE</parameter>...</function>`, one or more, or None
    when the body is anything else. One newline on each side of a value is the format's, not
    the value's. Values are text unless the tool's schema says the parameter is not a string."""
    calls: list[tuple[str, str, str | None]] = []
    pos = 0
    while pos < len(body):
        function = _XML_FUNCTION.match(body, pos)
        if function is None:
            return None
        name, inner, arguments = function.group(1).strip(), function.group(2), {}
        properties = (schemas.get(name) or {}).get("properties")
        properties = properties if isinstance(properties, dict) else {}
        at = 0
        while at < len(inner):
            parameter = _XML_PARAMETER.match(inner, at)
            if parameter is None:
                if inner[at:].strip(WS):
                    return None
                break
            key = parameter.group(1).strip()
            arguments[key] = _typed(parameter.group(2), properties.get(key))
            at = parameter.end()
        if not name:
            return None
        calls.append((name, json.dumps(arguments, ensure_ascii=False), None))
        pos = function.end()
    return calls


def _typed(value: str, schema: object) -> object:
    kind = schema.get("type") if isinstance(schema, dict) else None
    kinds = kind if isinstance(kind, list) else [kind]
    if kind is None or "string" in kinds:
        return value
    try:
        return loads(value.strip(WS))
    except ValueError:
        return value


class MistralParser(OpenerParser):
    """Also reads a reply that is the bare call list `[{...}]`: `[TOOL_CALLS]` is a control token
    in Mistral's vocabularies, and a detokeniser that renders control tokens as nothing drops it."""

    opener = "[TOOL_CALLS]"

    def __init__(self, arguments_key: str = "arguments") -> None:
        super().__init__(arguments_key)
        self._state = "start"
        self._scan = JsonScan()
        self._name = ""
        self._id: str | None = None

    def _step_call(self) -> bool:
        if self._state == "start":
            return self._step_start()
        if self._state == "open":
            return self._step_open()
        if self._state == "named":
            return self._step_named()
        if self._state == "args" and self._scan.pos == 0 and not self._lstrip_into_raw():
            return self._state == "text"
        end = self._scan_value()
        if end is None:
            return self._state == "text"
        value = loads_or_none(self._buf[:end])
        if self._state == "array":
            return self._finish(end, isinstance(value, list) and self.calls_in(value, keep_ids=True))
        call = call_from({"name": self._name, "arguments": value, "id": self._id}, self.arguments_key)
        if isinstance(value, dict) and call is not None:
            self._calls([call], keep_ids=True)
            return self._finish(end, ok=True)
        return self._finish(end, ok=False)

    def _lstrip_into_raw(self) -> bool:
        stripped = self._buf.lstrip(WS)
        self._raw += self._buf[:len(self._buf) - len(stripped)]
        self._buf = stripped
        if stripped:
            return True
        if self._closed:
            self._finish(0, ok=False)
        return False

    def _step_start(self) -> bool:
        stripped = self._buf.lstrip(WS)
        after = stripped[1:].lstrip(WS)
        undecided = not stripped or self.opener.startswith(stripped) or (
            stripped.startswith("[") and not after and len(stripped) <= MAX_BRACKET_SPACE)
        if undecided and not self._closed:
            return False
        if stripped.startswith("[") and after.startswith("{"):
            self._raw, self._buf = self._buf[:len(self._buf) - len(stripped)], stripped
            self._scan, self._state = JsonScan(), "array"
        else:
            self._state = "text"
        return True

    def _step_open(self) -> bool:
        if not self._lstrip_into_raw():
            return self._state == "text"
        self._scan = JsonScan()
        self._state = "array" if self._buf[0] == "[" else "named"
        return True

    def _step_named(self) -> bool:
        header = _named_header(self._buf)
        if header is None or (header == "more" and self._closed):
            return self._finish(0, ok=False)
        if header == "more":
            return False
        self._name, self._id, length = header
        self._raw, self._buf = self._raw + self._buf[:length], self._buf[length:]
        self._state = "args"
        return True


def _named_header(buf: str) -> tuple[str, str | None, int] | str | None:
    """`NAME[ARGS]` or `NAME[CALL_ID]ID[ARGS]` at the start of buf: (name, id, length),
    "more" while buf may still become one, None when it cannot."""
    n = _NAME_RUN.match(buf).end()  # type: ignore[union-attr]
    rest = buf[n:]
    if n > MAX_NAME_CHARS or (n == 0 and rest):
        return None
    if not rest or _ARGS.startswith(rest) and len(rest) < len(_ARGS) or _CALL_ID.startswith(rest):
        return "more"
    if rest.startswith(_ARGS):
        return buf[:n], None, n + len(_ARGS)
    if not rest.startswith(_CALL_ID):
        return None
    start = n + len(_CALL_ID)
    k = _ID_RUN.match(buf, start).end() - start  # type: ignore[union-attr]
    tail = buf[start + k:]
    if k > MAX_ID_CHARS or (k == 0 and tail):
        return None
    if not tail or (_ARGS.startswith(tail) and len(tail) < len(_ARGS)):
        return "more"
    if tail.startswith(_ARGS):
        return buf[:n], buf[start:start + k], start + k + len(_ARGS)
    return None
