"""What the streaming tool-call parsers (call_formats.py, reply_formats.py) share (stdlib only).

Each family's parser reads the content part of one choice's output (reasoning is split off before)
and turns it into TextDelta / ToolCallStarted / ToolCallArguments events. Rules shared by all:

- Text that cannot be the start of a call is passed on at once; only a trailing piece that
  could still become the family's opener (`<tool_c`, `[TOOL_`) or a call being read is held.
- A call is emitted once its text is complete: ToolCallStarted, then one ToolCallArguments
  piece with the arguments re-serialised as a JSON object. A call may still turn out
  malformed or cut off at its very end (no grammar, a stop string, max_tokens); emitting
  early would put a call on the wire that then could not be taken back.
- Never raise on model output: a call whose text does not parse as a call (bad JSON, no
  string name, arguments not an object) comes back as TextDelta with its text unchanged;
  so does a call cut off by the end of the output (max_tokens).
- Whitespace between calls, before a call, and after the last one at the end is dropped;
  whitespace between a call and text that follows stays when text came before the call.
"""
from __future__ import annotations

import json
import math
import re
import secrets
import string

from localllm.chat.types import OutputEvent, TextDelta, ToolCallArguments, ToolCallStarted

MAX_CALL_CHARS = 1 << 20
"""Text held for one call before it is given up on and passed on as text (bounds memory)."""
MAX_NAME_CHARS = 256
MAX_ID_CHARS = 64
MAX_JSON_DEPTH = 256

_ID_ALPHABET = string.ascii_letters + string.digits
_SPECIAL = re.compile(r'[{}\[\]"\\]')
_STRING_STOP = re.compile(r'["\\]')
_SPACE_RUN = re.compile(r"[ \t\r\n]*")
WS = " \t\r\n"


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker` (0 if none).
    Runs per streamed piece: such a suffix starts with the marker's first character, so one
    find in the last len(marker) - 1 characters settles the usual piece (none there)."""
    start = len(text) - len(marker) + 1
    i = text.find(marker[:1], max(start, 0))
    while i >= 0:  # the first candidate is the longest
        if marker.startswith(text[i:]):
            return len(text) - i
        i = text.find(marker[:1], i + 1)
    return 0


class JsonScan:
    """Finds where one JSON object or array that starts at index 0 of a growing buffer ends.

    Call `end(buf)` after each append; it resumes where it stopped, so scanning a value fed
    one character at a time stays linear. Returns the end index (exclusive), None while the
    value is open, or -1 when the text cannot be one JSON value (not `{`/`[`, too deep).
    """

    __slots__ = ("depth", "in_string", "pos")

    def __init__(self) -> None:
        self.pos = 0
        self.depth = 0
        self.in_string = False

    def end(self, buf: str) -> int | None:
        if self.pos == 0 and buf and buf[0] not in "{[":
            return -1
        while self.pos < len(buf):
            if self.in_string:
                j = _next_in_string(buf, self.pos)
                if j is None:
                    self.pos = len(buf)
                    return None
                if buf[j] == "\\":
                    if j + 1 >= len(buf):
                        self.pos = j  # re-read the backslash with its escaped character
                        return None
                    self.pos = j + 2
                    continue
                self.in_string, self.pos = False, j + 1
                continue
            match = _SPECIAL.search(buf, self.pos)
            if match is None:
                self.pos = len(buf)
                return None
            char, self.pos = match.group(), match.end()
            if char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
                if self.depth > MAX_JSON_DEPTH:
                    return -1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return self.pos
        return None


def _next_in_string(buf: str, pos: int) -> int | None:
    """The next quote or backslash (one search: two finds would rescan to the far one per escape)."""
    match = _STRING_STOP.search(buf, pos)
    return match.start() if match else None


def _waits_on_space(buf: str) -> bool:
    """Whether a parser that stopped stepping holds whitespace only. Such a parser decides nothing
    until other text comes, so more whitespace is only appended: a model writing whitespace for
    a long time then costs no rescan of the held run per piece (that was quadratic). Reads only
    the last character and the leading whitespace: a held call (`<tool_call>\\n{...`) is not
    copied per piece, as lstrip would."""
    return bool(buf) and buf[-1] in WS and _SPACE_RUN.match(buf).end() == len(buf)  # type: ignore[union-attr]


class HeldText:
    """Text held in `_buf`, fed piece by piece to a `_step` state machine (True: step again;
    False: it needs more text). The base of OutputParser and of the family parsers."""

    _buf = ""
    _waits_on_space = False
    """Initial values (each instance's own once written)."""

    def _step(self) -> bool:
        raise NotImplementedError

    def _feed_steps(self, text: str) -> None:
        buf, self._buf = self._buf, ""
        buf += text  # in place (CPython) while the local is its only reference: no copy of a long held buffer per piece
        self._buf = buf
        if self._waits_on_space and not text.strip(WS):
            return
        while self._step():
            pass
        self._waits_on_space = _waits_on_space(self._buf)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def loads(text: str) -> object:
    """json.loads that refuses NaN/Infinity (not JSON) and raises only ValueError."""
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise ValueError("too deeply nested") from exc


def loads_or_none(text: str) -> object:
    try:
        return loads(text)
    except ValueError:
        return None


def call_from(obj: object, arguments_key: str) -> tuple[str, str, str | None] | None:
    """(name, arguments JSON text, the model's own id or None) from one call object, or None
    when it is not a call. Accepts `arguments`/`parameters` (either family's word), arguments
    given as a JSON string, and OpenAI's nested `{"function": {...}}` shape."""
    if not isinstance(obj, dict):
        return None
    if "name" not in obj and isinstance(obj.get("function"), dict):
        obj = {**obj["function"], "id": obj.get("id")}
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
        return None
    args: object = {}
    for key in (arguments_key, "arguments", "parameters"):
        if key in obj:
            args = obj[key]
            break
    if isinstance(args, str):
        try:
            args = loads(args) if args.strip() else {}
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    call_id = obj.get("id")
    if not (isinstance(call_id, str) and 0 < len(call_id) <= MAX_ID_CHARS and call_id.isprintable()):
        call_id = None
    return name.strip(), json.dumps(args, ensure_ascii=False), call_id


class CallParser:
    """Base: passes all text on unchanged (used when tools are not parsed)."""

    def __init__(self, arguments_key: str = "arguments") -> None:
        self.arguments_key = arguments_key
        self.schemas: dict[str, dict] = {}
        """Tool name -> parameters schema, for formats whose values carry no JSON types (XML)."""
        self.num_calls = 0
        self._has_text = False
        self._events: list[OutputEvent] = []

    def feed(self, text: str) -> list[OutputEvent]:
        self._text(text)
        return self._take()

    def close(self) -> list[OutputEvent]:
        return self._take()

    def _take(self) -> list[OutputEvent]:
        events, self._events = self._events, []
        return events

    def _text(self, text: str) -> None:
        if not text:
            return
        self._has_text = True
        last = self._events[-1] if self._events else None
        if isinstance(last, TextDelta):  # one delta per feed where the text is contiguous
            self._events[-1] = TextDelta(last.text + text)
        else:
            self._events.append(TextDelta(text))

    def _calls(self, calls: list[tuple[str, str, str | None]], keep_ids: bool) -> None:
        for name, arguments, call_id in calls:
            index = self.num_calls
            self.num_calls += 1
            self._events.append(ToolCallStarted(index, call_id if keep_ids and call_id else new_call_id(), name))
            self._events.append(ToolCallArguments(index, arguments))

    def calls_in(self, value: object, keep_ids: bool = False) -> bool:
        """Emit the calls in a parsed JSON value (one call object or a list of them); False, and
        nothing emitted, when it is not entirely calls."""
        items = value if isinstance(value, list) else [value]
        calls = [call_from(item, self.arguments_key) for item in items]
        if not calls or any(call is None for call in calls):
            return False
        self._calls(calls, keep_ids)  # type: ignore[arg-type]
        return True


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def loads_many(text: str) -> list[object] | None:
    """The JSON values in `text`, one after another (whitespace or commas between), or None
    when any part of it is not JSON: models sometimes put several calls in one block."""
    values: list[object] = []
    pos, text = 0, text.strip(WS)
    try:
        while pos < len(text):
            value, pos = _DECODER.raw_decode(text, pos)
            values.append(value)
            while pos < len(text) and text[pos] in WS + ",":
                pos += 1
    except (ValueError, RecursionError):
        return None
    return values


class StreamParser(CallParser, HeldText):
    """Base of the family parsers: a buffer and a state machine (HeldText). `_step` consumes
    what it can decide on and returns True to be called again; False means it needs more text."""

    text_state = "text"
    """The state text is passed on in: where a call that is given back leaves the parser."""
    _state: str
    _scan: JsonScan

    def __init__(self, arguments_key: str) -> None:
        super().__init__(arguments_key)
        self._raw = ""
        """Text consumed for the call being read: given back unchanged if it is not a call."""
        self._closed = False
        self._after_call = False

    def feed(self, text: str) -> list[OutputEvent]:
        self._feed_steps(text)
        return self._take()

    def close(self) -> list[OutputEvent]:
        self._closed = True
        while self._step():
            pass
        self._text(self._raw + self._buf)
        self._raw = self._buf = ""
        return self._take()

    def _skip_gap(self) -> bool:
        """Whitespace right after a call: dropped before another call, at the end, and at the
        start of the content; kept between two texts. False while only whitespace has come."""
        if self._after_call:
            stripped = self._buf.lstrip(WS)
            if not stripped:
                if self._closed:
                    self._buf = ""
                return False
            self._after_call = False
            if not self._has_text:
                self._buf = stripped
        return True

    def _text_until(self, opener: str) -> bool:
        """Pass on the text before `opener`; True once the buffer starts with it (the whitespace
        before it dropped, kept in raw in case it is no call). Holds back a trailing piece that
        may start the opener, and trailing whitespace that may precede one."""
        i = self._buf.find(opener)
        if i >= 0:
            head = self._buf[:i]
            text = head.rstrip(WS)
            self._text(text)
            self._raw, self._buf = head[len(text):], self._buf[i:]
            return True
        if self._closed:
            text = self._buf
        else:
            text = self._buf[:len(self._buf) - partial_suffix(self._buf, opener)].rstrip(WS)
        self._text(text)
        self._buf = self._buf[len(text):]
        return False

    def _give_back(self, consumed: int) -> None:
        """Not a call: the raw text and `consumed` characters of the buffer go out as text."""
        self._text(self._raw + self._buf[:consumed])
        self._raw, self._buf = "", self._buf[consumed:]

    def _emitted(self, consumed: int) -> None:
        """A call went out: drop its text and the whitespace that follows."""
        self._raw, self._buf = "", self._buf[consumed:]
        self._after_call = True

    def _too_long(self) -> bool:
        return len(self._raw) + len(self._buf) > MAX_CALL_CHARS

    def _scan_value(self) -> int | None:
        """Where the JSON value at the start of the buffer (scanned by `self._scan`) ends; None:
        wait for more, or the call was given back and the parser is in `text_state`: on
        truncation (end of output, or too long) or text that cannot be JSON (too deep)."""
        end = self._scan.end(self._buf)
        if end is None and not (self._closed or self._too_long()):
            return None
        if end is None or end < 0:
            self._give_back(len(self._buf) if end is None else self._scan.pos)
            self._state = self.text_state
            return None
        return end
