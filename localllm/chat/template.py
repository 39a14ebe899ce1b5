"""Renders chat messages (and tools) into a prompt with the model's Jinja chat template.

Templates follow Hugging Face's conventions (`apply_chat_template`): the variables `messages`,
`tools` (OpenAI's `[{"type": "function", "function": {...}}]` list, or None), `add_generation_prompt`,
`bos_token`, `eos_token`, any `chat_template_kwargs` (e.g. `enable_thinking`, `reasoning_effort`),
and the helpers `raise_exception`, `strftime_now`, `tojson` with its arguments, `namespace` and
loop controls. Templates come from model files: they run in Jinja's immutable sandbox.

Templates of the `generic` family know nothing of tools: chat/fallback.py writes the tools,
calls and results into the messages for them.

Security: user text is never parsed for special tokens. Message contents, tool and parameter
descriptions and call argument keys and values are located in the render with sentinels and
tokenised apart; any other user string a template may write into its own text (schemas, call
ids, template kwargs) is refused with a 400 when it holds special-token text (alone, or as the
`<tag>` a template may write it as).
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from localllm.chat.fallback import with_tools_in_messages
from localllm.chat.families import Family, detect_family
from localllm.chat.messages import MAX_CHAT_MESSAGES, check_template_kwargs, normalise_messages, tool_dicts
from localllm.chat.sentinels import (
    Marker, Tokenize, as_tags, has_calls, match_segments, refuse_special_text, user_strings, variants,
)
from localllm.chat.types import ToolSpec
from localllm.types import InvalidParam

__all__ = ["MAX_CHAT_MESSAGES", "ChatTemplate", "RenderedPrompt", "Tokenize", "compiled_template",
           "prompt_opens_reasoning"]

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
    """(param, user strings) the template writes into its own text: refused if special (template
    kwargs; tool and call strings the sentinels did not locate are added per render)."""
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
        text = self._render(inputs)
        segments, checked = self._segments(text, inputs)
        for param, strings in checked:
            refuse_special_text(strings + as_tags(text, strings), tokenize, param)
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
        checked = [("chat_template_kwargs", list(user_strings(template_kwargs)))]
        tool_list = tool_dicts(list(tools))
        if not self.family.native_tools:
            normalised = with_tools_in_messages(normalised, tool_list, system_role=self.system_role)
            return _Inputs(normalised, None, kwargs, checked, continue_final)
        if self.family.name == "mistral":
            normalised = _mistral_call_ids(normalised)
        return _Inputs(normalised, tool_list or None, kwargs, checked, continue_final)

    def _segments(self, text: str, inputs: _Inputs) -> tuple[list[tuple[str, bool]] | None, list]:
        """The rendered prompt as (text, is_user_text) pieces, or None; and the (param, strings)
        still to check for special-token text.

        Renders again with a random sentinel in place of each user string; that render, split at
        the sentinels, gives the template's own text. First with sentinels for contents, tool
        descriptions and call arguments, then for contents only; None when neither lines
        up (a template that rewrites contents other than by trimming or JSON-escaping)."""
        nonce = "".join(secrets.choice("0123456789") for _ in range(24))  # digits survive upper/lower/trim/JSON
        for deep in (True, False) if inputs.tools or has_calls(inputs.messages) else (False,):
            marker = Marker(nonce)
            messages, tools = marker.messages(inputs.messages, deep), marker.tools(inputs.tools, deep)
            parts = re.split(f"{nonce}(\\d{{6}}){nonce}", self._render(inputs, messages, tools))
            segments = match_segments(text, parts, marker.strings)
            if segments is not None:
                return segments, inputs.checked + marker.unmarked(messages, tools)
        return None, inputs.checked + Marker(nonce).unmarked(inputs.messages, inputs.tools)

    def _render(self, inputs: _Inputs, messages: list[dict] | None = None, tools: list[dict] | None = None) -> str:
        try:
            return self._template.render({
                **inputs.kwargs,
                "messages": inputs.messages if messages is None else messages,
                "tools": inputs.tools if tools is None else tools,
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
    if segments is None or last is None or segments[last][0] not in variants(inputs.messages[-1]["content"]):
        return _cut_after_final(text, inputs), None
    segments = segments[:last + 1]
    return "".join(piece for piece, _ in segments), segments


def _cut_after_final(text: str, inputs: _Inputs) -> str:
    """Hugging Face's continue_final_message: the text up to the last occurrence of the final content."""
    for variant in variants(inputs.messages[-1]["content"]):
        end = text.rfind(variant)
        if variant and end >= 0:
            return text[:end + len(variant)]
    raise InvalidParam("messages", "the chat template does not write the final message's content, so it "
                       "cannot be continued")


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
