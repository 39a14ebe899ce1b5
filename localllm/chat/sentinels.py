"""Where user text sits in a rendered chat template, so it is tokenised without special tokens.

The template renders twice: with the real strings, and with a numbered random sentinel in place
of each user string (`Marker`). Split at the sentinels, the second render gives the template's
own text; `match_segments` lays it over the real render, allowing for text a template trims or
JSON-escapes. Strings no sentinel stands for are checked instead (`refuse_special_text`).
Stdlib only.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable

from localllm.types import InvalidParam

Tokenize = Callable[[str, bool], list[int]]
"""(text, parse_special) -> token ids, without BOS/EOS (the template writes its own)."""


def match_segments(text: str, parts: list[str], contents: list[str]) -> list[tuple[str, bool]] | None:
    """Lays the sentinel render's pieces (template text, content index, template text, ...)
    over the real render; None if they do not line up exactly."""
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for i in range(0, len(parts), 2):
        template_text = parts[i]
        if not text.startswith(template_text, pos):
            return None
        pieces.append((template_text, False))
        pos += len(template_text)
        if i + 1 == len(parts):
            break
        content = contents[int(parts[i + 1])] if int(parts[i + 1]) < len(contents) else None
        following = parts[i + 2]
        for variant in variants(content):
            if text.startswith(variant + following, pos):
                pieces.append((variant, True))
                pos += len(variant)
                break
        else:
            return None
    return pieces if pos == len(text) else None


def variants(content: str | None) -> tuple[str, ...]:
    """What a template may have written for a content: as is, trimmed (Gemma's `| trim`), or
    JSON-escaped (Llama 3.1 writes tool results with `| tojson`)."""
    if content is None:
        return ()
    variants = [content, content.strip(), content.rstrip(), content.lstrip(),
                json.dumps(content, ensure_ascii=False)[1:-1], json.dumps(content)[1:-1]]
    return tuple(dict.fromkeys(variants))


def has_calls(messages: list[dict]) -> bool:
    return any(m.get("tool_calls") for m in messages)


class Marker:
    """Swaps user strings for numbered sentinels (`strings[i]` <-> nonce, i, nonce)."""

    MAX_DEPTH = 16
    """Argument values nested deeper keep their text (and are checked for special tokens)."""

    def __init__(self, nonce: str) -> None:
        self.nonce = nonce
        self.strings: list[str] = []

    def mark(self, text: str) -> str:
        if not text or len(self.strings) >= 999_999:
            return text
        self.strings.append(text)
        return f"{self.nonce}{len(self.strings) - 1:06d}{self.nonce}"

    def messages(self, messages: list[dict], deep: bool) -> list[dict]:
        out = []
        for m in messages:
            m = {**m, "content": self.mark(m["content"])}
            if deep and m.get("tool_calls"):
                m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": self._values(
                    c["function"]["arguments"], 0)}} for c in m["tool_calls"]]
            out.append(m)
        return out

    def tools(self, tools: list[dict] | None, deep: bool) -> list[dict] | None:
        if not deep or not tools:
            return tools
        return [{**t, "function": {**t["function"], "description": self.mark(t["function"]["description"]),
                                   "parameters": self._parameters(t["function"]["parameters"])}} for t in tools]

    def _parameters(self, schema: dict) -> dict:
        """The schema with its top-level properties' descriptions marked (Hermes writes them as text)."""
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return schema
        return {**schema, "properties": {
            name: {**p, "description": self.mark(p["description"])}
            if isinstance(p, dict) and isinstance(p.get("description"), str) else p
            for name, p in properties.items()}}

    def _values(self, value: object, depth: int) -> object:
        if isinstance(value, str):
            return self.mark(value)
        if depth >= self.MAX_DEPTH:
            return value
        if isinstance(value, dict):  # keys too: a template may write one against its own text (`<parameter=KEY>`)
            return {self.mark(k): self._values(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self._values(v, depth + 1) for v in value]
        return value

    def unmarked(self, messages: list[dict], tools: list[dict] | None) -> list[tuple[str, list[str]]]:
        """Tool and call strings the template writes that no sentinel stands for (names, schemas,
        call ids; argument keys past MAX_DEPTH): they are checked for special-token text instead."""
        sentinel = re.compile(f"{self.nonce}\\d{{6}}{self.nonce}")
        calls = [m.get("tool_calls", []) for m in messages] + [m.get("tool_call_id", "") for m in messages]
        return [(param, [s for s in user_strings(value) if not sentinel.fullmatch(s)])
                for param, value in (("tools", tools or []), ("messages", calls))]


def user_strings(value: object) -> Iterable[str]:
    """Every string in a JSON-like value (keys too), and the JSON-escaped form where it differs.
    Iterative: a deeply nested value from a request cannot exhaust the stack."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
            escaped = json.dumps(item, ensure_ascii=False)[1:-1]
            if escaped != item:
                yield escaped
        elif isinstance(item, dict):
            for key, child in item.items():
                stack += (key, child)
        elif isinstance(item, (list, tuple)):
            stack += item


_TAG = re.compile(r"<[^<>\n]{1,256}>")
_WORD = re.compile(r"\w+")


def as_tags(text: str, strings: list[str]) -> list[str]:
    """`<s>` for each string the render has between `<` and `>`: a template that writes a user
    string as a tag (Qwen3-Coder writes a parameter's extra schema keys as `<KEY>`) may complete
    a special token with it (key `|im_end|`), which the string alone does not show. Plain words
    are left out: `<s>`, `<bos>` in the template's own text are no reason to refuse a key `s`."""
    found = {m.group() for m in _TAG.finditer(text)}
    return [f"<{s}>" for s in set(strings) if f"<{s}>" in found and not _WORD.fullmatch(s)]


def refuse_special_text(strings: list[str], tokenize: Tokenize, param: str) -> None:
    """InvalidParam when any of these user strings holds special-token text: they are written
    into the template's own text, which is tokenised with special tokens parsed."""
    if not strings:
        return
    text = "\n".join(strings)
    if tokenize(text, True) != tokenize(text, False):
        raise InvalidParam(param, f"{param} contains special-token text (e.g. a turn marker of this model), "
                           "which the chat template would write as a control token")
