"""Commands sent to the engine thread; small and immutable."""
from __future__ import annotations

from dataclasses import dataclass

from localllm.engine.request import Request


@dataclass(frozen=True, slots=True)
class AddRequest:
    request: Request


@dataclass(frozen=True, slots=True)
class AbortRequest:
    request_id: str


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


Command = AddRequest | AbortRequest | Shutdown
