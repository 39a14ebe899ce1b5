"""Protocol-neutral tool and output types (stdlib only): what every adapter maps to and from."""
from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One callable function offered to the model."""

    name: str
    description: str
    parameters: dict
    """JSON Schema of the arguments object (bounded by localllm.constraints before any grammar)."""


class ToolChoiceMode(enum.Enum):
    AUTO = "auto"
    """The model decides; a lazy grammar switches on at the family's call opener."""
    NONE = "none"
    """Tools are rendered but no call is parsed or forced."""
    REQUIRED = "required"
    """At least one call, forced by a grammar."""
    NAMED = "named"
    """Exactly the named function, forced by a grammar."""


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: ToolChoiceMode = ToolChoiceMode.AUTO
    name: str | None = None
    """The function, when mode is NAMED."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model made: `arguments` is JSON text, as OpenAI's wire format carries it."""

    id: str
    name: str
    arguments: str


# Output events: what a family's parser makes of one choice's generated text, in order.

@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    index: int
    """0, 1, ... within the choice."""
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallArguments:
    index: int
    text: str
    """The next piece of the call's arguments JSON text; the pieces concatenate to valid JSON."""


OutputEvent = TextDelta | ReasoningDelta | ToolCallStarted | ToolCallArguments
