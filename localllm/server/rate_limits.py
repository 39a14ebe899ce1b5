"""Per-key request and token limits over a sliding minute, and per-key usage.

Tokens are reserved when a request is admitted (prompt + max_tokens, or the slot's
remaining context) and settled to the real count when it ends, so concurrent requests
cannot all slip under the limit before any of them is booked.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from localllm.server.errors import ApiError

WINDOW_S = 60.0


@dataclass(eq=False, slots=True)
class Booking:
    """Tokens one request holds in its key's window: reserved while it runs, then what it used."""

    at_s: float
    num_tokens: int = 0
    settled: bool = False


@dataclass(slots=True)
class KeyUsage:
    num_requests: int = 0
    num_tokens: int = 0
    num_rate_limited: int = 0
    by_protocol: dict[str, list[int]] = field(default_factory=dict)
    """Settled requests and tokens per protocol ("openai.chat", "anthropic", "ollama", ...)."""
    request_times: deque[float] = field(default_factory=deque)
    """Admission times of the requests of the last minute."""
    bookings: list[Booking] = field(default_factory=list)
    """Running requests' reservations and settled requests of the last minute."""

    def prune(self, now: float) -> None:
        while self.request_times and now - self.request_times[0] > WINDOW_S:
            self.request_times.popleft()
        self.bookings = [b for b in self.bookings if not b.settled or now - b.at_s <= WINDOW_S]

    def tokens_in_window(self, leave_out: Booking | None = None) -> int:
        return sum(b.num_tokens for b in self.bookings if b is not leave_out)


@dataclass(eq=False, slots=True)
class Ticket:
    """One admitted request's hold on its key's budget; settle it exactly once."""

    key_id: str
    booking: Booking


class RateLimiter:
    """Thread-safe; `rpm`/`tpm` 0 means unlimited."""

    def __init__(self, rpm: int, tpm: int) -> None:
        self.rpm, self.tpm = rpm, tpm
        self._lock = threading.Lock()
        self.usage: dict[str, KeyUsage] = {}

    def admit(self, key_id: str) -> tuple[Ticket, dict[str, str]]:
        """Counts a request; 429 when the key is over its request or token limit.

        Changes state: books the request (with 0 tokens reserved so far)."""
        now = time.monotonic()
        with self._lock:
            usage = self._usage(key_id, now)
            requests, tokens = len(usage.request_times), usage.tokens_in_window()
            reset_s = _reset_s(usage, now)
            if (self.rpm and requests >= self.rpm) or (self.tpm and tokens >= self.tpm):
                self._refuse(usage, key_id, requests, tokens, reset_s,
                             f"{self.rpm or 'unlimited'} requests and {self.tpm or 'unlimited'} tokens per minute")
            usage.request_times.append(now)
            usage.num_requests += 1
            booking = Booking(now)
            usage.bookings.append(booking)
            return Ticket(key_id, booking), self._headers(requests + 1, tokens, reset_s or WINDOW_S)

    def reserve(self, ticket: Ticket, num_tokens: int, what: str = "prompt + max_tokens",
                advice: str = "lower max_tokens or retry later") -> dict[str, str]:
        """Holds `num_tokens` for the request; 429 when they do not fit the key's minute.

        Changes state: the ticket's reservation. Returns updated x-ratelimit-* headers."""
        now = time.monotonic()
        with self._lock:
            usage = self._usage(ticket.key_id, now)
            others = usage.tokens_in_window(leave_out=ticket.booking)
            if self.tpm and others + num_tokens > self.tpm:
                reset_s = _time_until_free(usage, now, others + num_tokens - self.tpm, ticket.booking)
                self._refuse(usage, ticket.key_id, len(usage.request_times), others, reset_s,
                             f"this request may use up to {num_tokens} tokens ({what}) and "
                             f"{others} of the key's {self.tpm} tokens per minute are in use or reserved; "
                             f"{advice}")
            ticket.booking.num_tokens = num_tokens
            return self._headers(len(usage.request_times), others + num_tokens, _reset_s(usage, now) or WINDOW_S)

    def settle(self, ticket: Ticket, num_tokens: int, protocol: str = "openai") -> None:
        """Replaces the reservation by what the request used; it counts for the next minute,
        and in the key's totals under `protocol`."""
        with self._lock:
            usage = self.usage.setdefault(ticket.key_id, KeyUsage())
            usage.num_tokens += num_tokens
            counts = usage.by_protocol.setdefault(protocol, [0, 0])
            counts[0] += 1
            counts[1] += num_tokens
            booking = ticket.booking
            if not booking.settled:
                booking.num_tokens, booking.settled, booking.at_s = num_tokens, True, time.monotonic()

    def snapshot(self) -> dict[str, dict]:
        """Per key: requests, tokens, rate_limited, and `protocols` ({protocol: {requests, tokens}})."""
        with self._lock:
            return {k: {"requests": u.num_requests, "tokens": u.num_tokens, "rate_limited": u.num_rate_limited,
                        "protocols": {p: {"requests": r, "tokens": t} for p, (r, t) in sorted(u.by_protocol.items())}}
                    for k, u in self.usage.items()}

    def _usage(self, key_id: str, now: float) -> KeyUsage:
        usage = self.usage.setdefault(key_id, KeyUsage())
        usage.prune(now)
        return usage

    def _refuse(self, usage: KeyUsage, key_id: str, requests: int, tokens: int, reset_s: float, what: str) -> None:
        usage.num_rate_limited += 1
        retry = str(max(1, math.ceil(reset_s)))
        raise ApiError(429, f"Rate limit reached for key {key_id!r}: {what}. Retry in {retry} s.",
                       type="rate_limit_error", code="rate_limit_exceeded",
                       headers={**self._headers(requests, tokens, reset_s), "Retry-After": retry})

    def _headers(self, requests: int, tokens: int, reset_s: float) -> dict[str, str]:
        headers = {}
        if self.rpm:
            headers |= {"x-ratelimit-limit-requests": str(self.rpm),
                        "x-ratelimit-remaining-requests": str(max(0, self.rpm - requests)),
                        "x-ratelimit-reset-requests": f"{reset_s:.0f}s"}
        if self.tpm:
            headers |= {"x-ratelimit-limit-tokens": str(self.tpm),
                        "x-ratelimit-remaining-tokens": str(max(0, self.tpm - tokens)),
                        "x-ratelimit-reset-tokens": f"{reset_s:.0f}s"}
        return headers


def completion_budget(num_prompt_tokens: int, max_tokens: int | None, slot_ctx: int) -> int:
    """The most tokens one choice may generate: max_tokens, else what the slot has left."""
    return max_tokens if max_tokens is not None else max(1, slot_ctx - num_prompt_tokens)


def _reset_s(usage: KeyUsage, now: float) -> float:
    """Seconds until the oldest request or settled booking leaves the window."""
    starts = [usage.request_times[0]] if usage.request_times else []
    starts += [b.at_s for b in usage.bookings if b.settled]
    return max(0.0, WINDOW_S - (now - min(starts))) if starts else 0.0


def _time_until_free(usage: KeyUsage, now: float, num_tokens: int, leave_out: Booking) -> float:
    """Seconds until settled bookings totalling `num_tokens` leave the window; running
    requests' reservations free up when they end, which we cannot know: then a short wait."""
    freed = 0
    for booking in sorted((b for b in usage.bookings if b.settled and b is not leave_out), key=lambda b: b.at_s):
        freed += booking.num_tokens
        if freed >= num_tokens:
            return max(1.0, WINDOW_S - (now - booking.at_s))
    return 1.0 if any(not b.settled and b is not leave_out for b in usage.bookings) else WINDOW_S
