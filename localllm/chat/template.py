"""Renders chat messages (and tools) into a prompt with the model's Jinja chat template.

Templates follow Hugging Face's conventions (`apply_chat_template`): the variables `messages`,
`tools` (OpenAI's `[{"type": "function", "function": {...}}]` list, or None), `add_generation_prompt`,
`bos_token`, `eos_token`, any `chat_template_kwargs` (e.g. `enable_thinking`, `reasoning_effort`),
and the helpers `raise_exception`, `strftime_now`, `tojson` with its arguments, `namespace` and
loop controls. Templates come from model files: they run in Jinja's immutable sandbox.

Templates of the `generic` family know nothing of tools: chat/fallback.py writes the tools,
calls and results into the messages for them.

Security: user text is never parsed for special tokens. Message contents are located in the
render with sentinels and tokenised apart; any other user string a template may write into its
own text (tool names, descriptions, schemas, call arguments and ids, template kwargs) is refused
with a 400 when it holds special-token text.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from localllm.chat.fallback import with_tools_in_messages
from localllm.chat.families import Family, detect_family
from localllm.chat.messages import MAX_CHAT_MESSAGES, check_template_kwargs, normalise_messages, tool_dicts
from localllm.chat.types import ToolSpec
from localllm.types import InvalidParam

__all__ = ["MAX_CHAT_MESSAGES", "ChatTemplate", "RenderedPrompt", "Tokenize", "compiled_template",
           "prompt_opens_reasoning"]

Tokenize = Callable[[str, bool], list[int]]
"""(text, parse_special) -> token ids, without BOS/EOS (the template writes its own)."""

DEFAULT_TEMPLATE_KWARGS = {"enable_thinking": True}
"""As llama-server passes them: reasoning templates think unless a request says otherwise."""
_MISTRAL_ID_RE = re.compile(r"^[A-Za-z0-9]{9}$")


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    text: str
    token_ids: list[int]
    starts_in_reasoning: bool
    """The generation prompt opens a reasoning block (ends with `<think>`): the output starts inside it."""


@dataclass(frozen=True, slots=True)
class _Inputs:
    messages: list[dict]
    tools: list[dict] | None
    kwargs: dict
    checked: list[tuple[str, list[str]]]
    """(param, user strings) the template may write into its own text: refused if special."""
    continue_final: bool = False
    """Render without a generation prompt and end the text with the final message's content."""


class ChatTemplate:
    """A compiled, sandboxed chat template (templates come from model files: untrusted)."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", family: Family | None = None) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise_template_error
        env.globals["strftime_now"] = _strftime_now
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(source)
        except (jinja2.TemplateError, RecursionError) as exc:  # the model file's fault, but every chat fails
            raise InvalidParam("messages", f"this model's chat template cannot be compiled ({str(exc)[:200]}); "
                               "use /v1/completions") from None
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.family = family if family is not None else detect_family(source)
        self.system_role = self._has_system_role()

    def render(self, messages: Sequence[dict], *, tools: Sequence[ToolSpec] = (),
               template_kwargs: dict | None = None, continue_final_message: bool = False) -> str:
        inputs = self._inputs(messages, tools, template_kwargs, continue_final_message)
        text = self._render(inputs)
        return _cut_after_final(text, inputs) if continue_final_message else text

    def prompt_token_ids(self, messages: Sequence[dict], tokenize: Tokenize, max_tokens: int, *,
                         tools: Sequence[ToolSpec] = (), template_kwargs: dict | None = None,
                         continue_final_message: bool = False) -> list[int]:
        return self.prompt(messages, tokenize, max_tokens, tools=tools, template_kwargs=template_kwargs,
                           continue_final_message=continue_final_message).token_ids

    def prompt(self, messages: Sequence[dict], tokenize: Tokenize, max_tokens: int, *,
               tools: Sequence[ToolSpec] = (), template_kwargs: dict | None = None,
               continue_final_message: bool = False) -> RenderedPrompt:
        """The rendered prompt as text and tokens: the template's own text with special tokens
        parsed, message contents without, so a user cannot forge turn markers. Slow: call off the
        loop. InvalidParam as soon as the prompt passes `max_tokens` (one slot's context).
        `continue_final_message`: the final message is an assistant's reply to continue (a
        prefill, as Anthropic's API and llama-server allow): no generation prompt, and the
        prompt ends where that content ends."""
        inputs = self._inputs(messages, tools, template_kwargs, continue_final_message)
        for param, strings in inputs.checked:
            _refuse_special_text(strings, tokenize, param)
        text = self._render(inputs)
        segments = self._segments(text, inputs)
        if continue_final_message:
            text, segments = _continued(text, segments, inputs)
        if segments is None:  # the template rewrites contents: safe only if none holds special text
            for i, message in enumerate(inputs.messages):
                if tokenize(message["content"], True) != tokenize(message["content"], False):
                    raise InvalidParam("messages", f"messages[{i}].content contains special-token text, which "
                                       "this model's chat template does not let the server keep apart")
            segments = [(text, False)]
        token_ids: list[int] = []
        for piece, is_content in segments:
            if piece:
                token_ids += tokenize(piece, not is_content)
            if len(token_ids) > max_tokens:
                raise InvalidParam("messages", f"The messages have more than {max_tokens} tokens, more than one "
                                   "request slot's context holds.")
        return RenderedPrompt(text, token_ids, prompt_opens_reasoning(text, self.family))

    def _inputs(self, messages: Sequence[dict], tools: Sequence[ToolSpec], template_kwargs: dict | None,
                continue_final: bool = False) -> _Inputs:
        normalised = normalise_messages(list(messages))
        final = normalised[-1]
        if continue_final and (final["role"] != "assistant" or final.get("tool_calls") or not final["content"]):
            raise InvalidParam("messages", "only a final assistant message with text content and no tool calls "
                               "can be continued")
        template_kwargs = check_template_kwargs(template_kwargs or {})
        kwargs = {**DEFAULT_TEMPLATE_KWARGS, **template_kwargs}
        checked = [("chat_template_kwargs", list(_strings(template_kwargs)))]
        tool_list = tool_dicts(list(tools))
        if not self.family.native_tools:
            normalised = with_tools_in_messages(normalised, tool_list, system_role=self.system_role)
            return _Inputs(normalised, None, kwargs, checked, continue_final)
        if self.family.name == "mistral":
            normalised = _mistral_call_ids(normalised)
        calls = [m.get("tool_calls", []) for m in normalised] + [m.get("tool_call_id", "") for m in normalised]
        checked += [("tools", list(_strings(tool_list))), ("messages", list(_strings(calls)))]
        return _Inputs(normalised, tool_list or None, kwargs, checked, continue_final)

    def _segments(self, text: str, inputs: _Inputs) -> list[tuple[str, bool]] | None:
        """The rendered prompt as (text, is_message_content) pieces, or None.

        Renders again with a random sentinel for each non-empty content; that render, split at
        the sentinels, gives the template's own text. None when the two renders do not line up
        (a template that rewrites contents other than by trimming or JSON-escaping)."""
        nonce = "".join(secrets.choice("0123456789") for _ in range(24))  # digits survive upper/lower/trim/JSON
        marked = [{**m, "content": f"{nonce}{i:05d}{nonce}"} if m["content"] else m
                  for i, m in enumerate(inputs.messages)]
        parts = re.split(f"{nonce}(\\d{{5}}){nonce}", self._render(inputs, marked))
        return _match(text, parts, [m["content"] for m in inputs.messages])

    def _render(self, inputs: _Inputs, messages: list[dict] | None = None) -> str:
        try:
            return self._template.render({
                **inputs.kwargs,
                "messages": inputs.messages if messages is None else messages,
                "tools": inputs.tools,
                "add_generation_prompt": not inputs.continue_final,
                "bos_token": self.bos_token,
                "eos_token": self.eos_token,
            })
        except Exception as exc:  # a model file's template may raise anything; never a 500
            raise InvalidParam("messages", f"messages could not be rendered with the model's chat template: "
                               f"{str(exc)[:300]}") from exc

    def _has_system_role(self) -> bool:
        """Whether a system message reaches the prompt (Gemma 2's template raises instead)."""
        probe = "7f3e1c9a-system"
        inputs = _Inputs([{"role": "system", "content": probe}, {"role": "user", "content": "hi"}], None,
                         dict(DEFAULT_TEMPLATE_KWARGS), [])
        try:
            return probe in self._render(inputs)
        except InvalidParam:
            return False


def prompt_opens_reasoning(text: str, family: Family) -> bool:
    """The prompt ends inside a reasoning block (DeepSeek-R1's and Qwen3's generation prompts
    end with `<think>\\n`): the model's output starts as reasoning."""
    return family.think_open is not None and text.rstrip().endswith(family.think_open)


def _continued(text: str, segments: list[tuple[str, bool]] | None,
               inputs: _Inputs) -> tuple[str, list[tuple[str, bool]] | None]:
    """The render and its pieces cut after the final message's content (the last content piece)."""
    last = max((i for i, (_, is_content) in enumerate(segments or ()) if is_content), default=None)
    if segments is None or last is None or segments[last][0] not in _variants(inputs.messages[-1]["content"]):
        return _cut_after_final(text, inputs), None
    segments = segments[:last + 1]
    return "".join(piece for piece, _ in segments), segments


def _cut_after_final(text: str, inputs: _Inputs) -> str:
    """Hugging Face's continue_final_message: the text up to the last occurrence of the final content."""
    for variant in _variants(inputs.messages[-1]["content"]):
        end = text.rfind(variant)
        if variant and end >= 0:
            return text[:end + len(variant)]
    raise InvalidParam("messages", "the chat template does not write the final message's content, so it "
                       "cannot be continued")


def _match(text: str, parts: list[str], contents: list[str]) -> list[tuple[str, bool]] | None:
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
        for variant in _variants(content):
            if text.startswith(variant + following, pos):
                pieces.append((variant, True))
                pos += len(variant)
                break
        else:
            return None
    return pieces if pos == len(text) else None


def _variants(content: str | None) -> tuple[str, ...]:
    """What a template may have written for a content: as is, trimmed (Gemma's `| trim`), or
    JSON-escaped (Llama 3.1 writes tool results with `| tojson`)."""
    if content is None:
        return ()
    variants = [content, content.strip(), content.rstrip(), content.lstrip(),
                json.dumps(content, ensure_ascii=False)[1:-1], json.dumps(content)[1:-1]]
    return tuple(dict.fromkeys(variants))


def _strings(value: object) -> Iterable[str]:
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


def _refuse_special_text(strings: list[str], tokenize: Tokenize, param: str) -> None:
    """InvalidParam when any of these user strings holds special-token text: they are written
    into the template's own text, which is tokenised with special tokens parsed."""
    if not strings:
        return
    text = "\n".join(strings)
    if tokenize(text, True) != tokenize(text, False):
        raise InvalidParam(param, f"{param} contains special-token text (e.g. a turn marker of this model), "
                           "which the chat template would write as a control token")


def _mistral_call_ids(messages: list[dict]) -> list[dict]:
    """Mistral's template wants 9-character alphanumeric call ids; others (OpenAI's `call_...`)
    map to a stable 9-character digest, the same for a call and its result."""
    def short(call_id: str) -> str:
        if _MISTRAL_ID_RE.match(call_id):
            return call_id
        digest = hashlib.sha256(call_id.encode()).digest()
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        return "".join(alphabet[b % len(alphabet)] for b in digest[:9])

    out = []
    for m in messages:
        if m.get("tool_calls"):
            m = {**m, "tool_calls": [{**c, "id": short(c["id"])} for c in m["tool_calls"]]}
        if "tool_call_id" in m:
            m = {**m, "tool_call_id": short(m["tool_call_id"])}
        out.append(m)
    return out


def _raise_template_error(message: str) -> None:
    raise ValueError(message)


def _strftime_now(fmt: str) -> str:
    if not isinstance(fmt, str) or len(fmt) > 64:
        raise ValueError("strftime_now takes a format of at most 64 characters")
    return datetime.datetime.now().strftime(fmt)


def _tojson(value: object, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: Sequence[str] | None = None, sort_keys: bool = False) -> str:
    """Hugging Face's `tojson`: plain json.dumps (Jinja's own escapes HTML and sorts keys)."""
    if isinstance(indent, int) and not 0 <= indent <= 16 or isinstance(indent, str) and len(indent) > 16:
        raise ValueError("tojson indent out of range")
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=tuple(separators) if separators is not None else None, sort_keys=sort_keys)


@functools.lru_cache(maxsize=16)
def compiled_template(source: str, bos_token: str, eos_token: str, family_override: str | None = None) -> ChatTemplate:
    """Jinja compiles a template in milliseconds; do it once per model, not per request.
    `family_override`: models.toml's `template_family` (ValueError if unknown)."""
    return ChatTemplate(source, bos_token, eos_token, detect_family(source, family_override))
