"""Template families: how a model family writes tool calls and reasoning (stdlib only).

The one table that templates (rendering, fallback), output parsers and tool grammars read.
Formats, as the families' own chat templates and llama.cpp's common/chat.cpp show them:

- hermes (Hermes 2 Pro, Qwen2.5, Qwen3, QwQ): `<tool_call>\\n{"name": N, "arguments": {...}}\\n</tool_call>`,
  one block per call.
- llama3 (Llama 3.1 / 3.2 / 3.3): the reply is a bare JSON object
  `{"name": N, "parameters": {...}}`, optionally after `<|python_tag|>`.
- mistral (Mistral Nemo / Small / Large): `[TOOL_CALLS][{"name": N, "arguments": {...}, "id": "abcDEF123"}]`.
- generic (any template that does not render tools itself): the tool list and this format are
  injected into the system message; a call is `{"tool_calls": [{"name": N, "arguments": {...}}]}`.

Reasoning is orthogonal: a template that writes `<think>` (Qwen3, QwQ, DeepSeek-R1) marks
thinking with `<think>` ... `</think>`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    call_open: str
    """Text that opens a call in the output ("" where a call is a bare JSON object)."""
    call_close: str
    """Text that closes one call (hermes) or the list of calls (mistral); "" where JSON ends it."""
    arguments_key: str
    """The key of the arguments object inside a call."""
    native_tools: bool
    """The template renders `tools` itself; False: the tool list is injected into the system message."""
    think_open: str | None = None
    think_close: str | None = None
    """Reasoning markers; None when the template has no reasoning."""

    @property
    def reasons(self) -> bool:
        return self.think_open is not None


HERMES = Family("hermes", "<tool_call>", "</tool_call>", "arguments", native_tools=True)
LLAMA3 = Family("llama3", "", "", "parameters", native_tools=True)
MISTRAL = Family("mistral", "[TOOL_CALLS]", "", "arguments", native_tools=True)
GENERIC = Family("generic", "", "", "arguments", native_tools=False)
FAMILIES = {f.name: f for f in (HERMES, LLAMA3, MISTRAL, GENERIC)}

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

CALL_AND_REASONING_MARKERS = ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "<|python_tag|>", "<tool_call>", "</tool_call>",
                              THINK_OPEN, THINK_CLOSE)
"""Markers the output parsers read. Some vocabularies make them control tokens, which detokenise
to nothing by default (llama-server keeps them as `preserved_tokens`); the backend shows these."""


def with_reasoning(family: Family) -> Family:
    return Family(family.name, family.call_open, family.call_close, family.arguments_key, family.native_tools,
                  THINK_OPEN, THINK_CLOSE)


def detect_family(template_source: str, override: str | None = None) -> Family:
    """The family of a chat template (from the model file or models.toml), or the one named by
    `override` (models.toml `template_family`). Unknown override names raise ValueError.

    A native family only where the template writes calls the way that family's parser reads
    them; anything else is generic (the fallback format), never a wrong native guess: a
    `<tool_call>` with `<arg_key>` inside (GLM, Ling) or with neither JSON `"arguments"` nor
    `<function=` (MiniMax M3) is not hermes, and a Llama 3 header template is llama3 only when
    it writes `"parameters"` (not functionary's `>>>` / `<function=`, nor firefunction's)."""
    if override is not None:
        if override not in FAMILIES:
            raise ValueError(f"unknown template family {override!r}; known: {sorted(FAMILIES)}")
        family = FAMILIES[override]
    elif _is_hermes(template_source):
        family = HERMES
    elif "[TOOL_CALLS]" in template_source:
        family = MISTRAL
    elif "<|start_header_id|>" in template_source and '"parameters": ' in template_source:
        family = LLAMA3
    else:
        family = GENERIC
    return with_reasoning(family) if THINK_CLOSE in template_source else family


def _is_hermes(source: str) -> bool:
    return ("<tool_call>" in source and "<arg_key>" not in source
            and ('"arguments"' in source or "<function=" in source))
