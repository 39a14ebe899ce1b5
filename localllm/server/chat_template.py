"""Renders OpenAI chat messages into a prompt with the model's Jinja chat template."""
from __future__ import annotations

import functools
from collections.abc import Sequence
import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from localllm.server.errors import bad_request

_ROLES = {"system", "developer", "user", "assistant"}


class ChatTemplate:
    """A compiled, sandboxed chat template (templates come from model files: untrusted)."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_template_error
        self._template = env.from_string(source)
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: Sequence[dict]) -> str:
        try:
            return self._template.render(
                messages=[_normalise(m, i) for i, m in enumerate(messages)],
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except (jinja2.TemplateError, TypeError, ValueError) as exc:
            raise bad_request(f"messages could not be rendered with the model's chat template: {exc}", "messages") from exc


def _normalise(message: object, index: int) -> dict:
    """Validates one message; content parts of type text are joined into a string."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad_request(f"{where} must be an object", "messages")
    role = message.get("role")
    if role not in _ROLES:
        raise bad_request(f"{where}.role must be one of {sorted(_ROLES)}", "messages")
    content = message.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):
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
