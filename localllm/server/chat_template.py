"""Renders OpenAI chat messages into a prompt with the model's Jinja chat template."""
from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Callable, Sequence
import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from localllm.server.errors import bad_request

_ROLES = {"system", "developer", "user", "assistant"}
MAX_CHAT_MESSAGES = 4096
"""Messages per chat request: bounds the rendering and tokenising work one request can ask for."""

Tokenize = Callable[[str, bool], list[int]]
"""(text, parse_special) -> token ids, without BOS/EOS (the template writes its own)."""


class ChatTemplate:
    """A compiled, sandboxed chat template (templates come from model files: untrusted)."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_template_error
        try:
            self._template = env.from_string(source)
        except (jinja2.TemplateError, RecursionError) as exc:  # the model file's fault, but every chat fails
            raise bad_request(f"this model's chat template cannot be compiled ({str(exc)[:200]}); use "
                              "/v1/completions", "messages") from None
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: Sequence[dict]) -> str:
        return self._render([_normalise(m, i) for i, m in enumerate(messages)])

    def prompt_token_ids(self, messages: Sequence[dict], tokenize: Tokenize, max_tokens: int) -> list[int]:
        """The rendered prompt as tokens: the template's own text with special tokens parsed,
        message contents without, so a user cannot forge turn markers. Slow: call off the loop.
        A 400 as soon as the prompt passes `max_tokens` (one slot's context)."""
        normalised = [_normalise(m, i) for i, m in enumerate(messages)]
        segments = self._segments(normalised)
        if segments is None:  # the template rewrites contents: safe only if none holds special text
            for i, message in enumerate(normalised):
                if tokenize(message["content"], True) != tokenize(message["content"], False):
                    raise bad_request(f"messages[{i}].content contains special-token text, which this "
                                      "model's chat template does not let the server keep apart", "messages")
            segments = [(self._render(normalised), False)]
        token_ids: list[int] = []
        for text, is_content in segments:
            if text:
                token_ids += tokenize(text, not is_content)
            if len(token_ids) > max_tokens:
                raise bad_request(f"The messages have more than {max_tokens} tokens, more than one "
                                  "request slot's context holds.", "messages")
        return token_ids

    def _segments(self, normalised: list[dict]) -> list[tuple[str, bool]] | None:
        """The rendered prompt as (text, is_message_content) pieces, or None.

        Renders once with the real contents and once with a random sentinel per message; the
        sentinel render, split at the sentinels, gives the template's own text. None when the
        two renders do not line up (a template that rewrites contents other than by trimming)."""
        text = self._render(normalised)
        nonce = "".join(secrets.choice("0123456789") for _ in range(24))  # digits survive upper/lower/trim
        marked = self._render([{**m, "content": f"{nonce}{i:05d}{nonce}"} for i, m in enumerate(normalised)])
        parts = re.split(f"{nonce}(\\d{{5}}){nonce}", marked)
        return _match(text, parts, [m["content"] for m in normalised])

    def _render(self, messages: list[dict]) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except (jinja2.TemplateError, TypeError, ValueError) as exc:
            raise bad_request(f"messages could not be rendered with the model's chat template: {exc}", "messages") from exc


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
    """What a template may have written for a content: as is, or trimmed (Gemma's `| trim`)."""
    if content is None:
        return ()
    return (content, content.strip(), content.rstrip(), content.lstrip())


def _normalise(message: object, index: int) -> dict:
    """Validates one message; content parts of type text are joined into a string."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad_request(f"{where} must be an object", "messages")
    role = message.get("role")
    if role not in _ROLES:
        raise bad_request(f"{where}.role must be one of {sorted(_ROLES)}", "messages")
    content = message.get("content")
    if content is None:  # OpenAI allows it only for assistant tool calls, which are not supported yet
        raise bad_request(f"{where}.content is required", "messages")
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"{where}.content: only text parts are supported", "messages")
            texts.append(part["text"])
        content = "".join(texts)
    elif not isinstance(content, str):
        raise bad_request(f"{where}.content must be a string or a list of text parts", "messages")
    return {"role": "system" if role == "developer" else role, "content": content}


def _raise_template_error(message: str) -> None:
    raise ValueError(message)


@functools.lru_cache(maxsize=16)
def compiled_template(source: str, bos_token: str, eos_token: str) -> ChatTemplate:
    """Jinja compiles a template in milliseconds; do it once per model, not per request."""
    return ChatTemplate(source, bos_token, eos_token)
