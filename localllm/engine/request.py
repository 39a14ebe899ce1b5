"""A generation request as the engine thread sees it."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from localllm.engine.text import TextStream
from localllm.types import FinishReason, SamplingParams


class RequestState(enum.Enum):
    WAITING = "waiting"  # queued, no slot yet
    PREFILL = "prefill"  # has a slot, prompt partly in the KV cache
    DECODE = "decode"  # prompt done, generating one token per step
    FINISHED = "finished"


@dataclass(eq=False, slots=True)
class Request:
    """Mutable per-request state; touched only by the engine thread."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    """max_tokens resolved against the slot's context."""
    cache_namespace: str = ""
    """Cached prefixes (in memory and on disk) are reused only within one namespace (tenant)."""
    arrival_s: float = field(default_factory=time.monotonic)
    state: RequestState = RequestState.WAITING
    slot_id: int | None = None
    num_computed_tokens: int = 0
    """Prompt tokens already in the KV cache (reused or evaluated)."""
    num_reused_tokens: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    text: TextStream = field(init=False)

    def __post_init__(self) -> None:
        self.text = TextStream(self.params.stop)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.state is RequestState.FINISHED
