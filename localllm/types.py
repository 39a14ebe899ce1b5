"""Plain data shared by every layer: sampling parameters, streamed deltas, stats.

Standard library only, so the scheduler and the server can both import it
without pulling in llama.cpp.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from localllm.constraints import Grammar


class FinishReason(str, enum.Enum):
    """Why a request stopped; values are OpenAI's `finish_reason` strings."""

    STOP = "stop"  # end-of-generation token or a stop string
    LENGTH = "length"  # max_tokens or the slot's context reached
    ABORT = "abort"  # cancelled by the client
    ERROR = "error"  # the engine could not run it


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens for one request. Defaults follow OpenAI's."""

    max_tokens: int | None = None
    """Most tokens to generate; None means until the slot's context is full."""
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k (but a cheap top-k still runs first for speed, see backend)."""
    min_p: float = 0.0
    seed: int | None = None
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) pairs; -100 effectively bans a token."""
    stop: tuple[str, ...] = ()
    """Strings that end generation; never emitted, matched across token boundaries."""
    ignore_eos: bool = False
    grammar: Grammar | None = None
    """Bounded GBNF the output must match (response_format), with its digest; None: unconstrained."""
    logprobs: int | None = None
    """Report the chosen token's log-probability and this many top alternatives (0-20)."""

    def __post_init__(self) -> None:
        checks = [
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens", "must be at least 1"),
            (0.0 <= self.temperature <= 2.0, "temperature", "must be between 0 and 2"),
            (0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]"),
            (self.top_k >= 0, "top_k", "must be 0 or more"),
            (0.0 <= self.min_p <= 1.0, "min_p", "must be between 0 and 1"),
            (self.repeat_penalty > 0.0, "repeat_penalty", "must be positive"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty", "must be between -2 and 2"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty", "must be between -2 and 2"),
            (self.penalty_last_n >= 0, "penalty_last_n", "must be 0 or more"),
            (len(self.stop) <= 16, "stop", "takes at most 16 strings"),
            (all(isinstance(s, str) and s for s in self.stop), "stop", "strings must be non-empty"),
            (all(len(s) <= 256 for s in self.stop), "stop", "strings are at most 256 characters each"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, "top_logprobs", "must be between 0 and 20"),
        ]
        for ok, param, message in checks:
            if not ok:
                raise InvalidParam(param, f"{param} {message}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


class InvalidParam(ValueError):
    """A request parameter is out of range; `param` names it for the API error."""

    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(message)
        self.param = param


class PromptTooLong(InvalidParam):
    """The prompt plus max_tokens does not fit one slot's context."""


class QueueFull(Exception):
    """Every slot is busy and the wait queue is at its bound: the API answers 429 with Retry-After.
    Not a RuntimeError, which the API answers as 503 (the model is not ready)."""


@dataclass(slots=True)
class TokenDelta:
    """What one engine step produced for one request."""

    request_id: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    """Prompt tokens not evaluated: reused from the prefix cache or a prefix state (all of them on a
    response-cache hit)."""
    num_generated_tokens: int = 0
    error: str | None = None
    logprobs: list[TokenLogprob] | None = None
    """One entry per token in token_ids, when the request asked for logprobs."""
    stop_sequence: str | None = None
    """The stop string that ended the request (finish_reason STOP by a stop string, not end of generation)."""


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    """The most likely tokens at this step, as (token id, logprob), best first."""


@dataclass(frozen=True, slots=True)
class SlotStats:
    slot_id: int
    state: str
    """idle | prefill | decode (and "busy" where /v1/stats hides another key's slot)"""
    request_id: str | None
    num_cached_tokens: int
    """Tokens held in the KV cache for this slot (kept after a request ends)."""
    num_generated_tokens: int
    num_reused_tokens: int
    age_s: float
    cache_namespace: str = ""
    """Whose tokens the slot holds (Request.cache_namespace): /v1/stats shows a non-admin key
    only its own slots' details. Never sent to clients."""


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot taken on the engine thread after a step."""

    model: str
    num_slots: int
    num_busy_slots: int
    num_waiting: int
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    num_prompt_tokens_total: int
    num_generated_tokens_total: int
    num_reused_tokens_total: int
    num_admitted_total: int
    """Requests that got a slot: each one is a prefix-cache query (memory, then prefix states on disk)."""
    num_prefix_hits_total: int
    """Prefix-cache hits: admitted requests that reused at least one prompt token (from a slot
    or a restored prefix state)."""
    num_kv_cells_used: int
    num_kv_cells_total: int
    num_steps: int
    finished_by_reason: dict[str, int]
    slots: tuple[SlotStats, ...]
    loop_heartbeat_s: float
    """time.monotonic() of the engine loop's last iteration (liveness)."""
