"""API keys, per-key rate limits (requests and tokens per minute) and per-key usage."""
from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from localllm.config import ServerConfig
from localllm.server.errors import ApiError

WINDOW_S = 60.0
KEY_ID = web.RequestKey("key_id", str)
"""Which key made the request (for limits, usage and logs)."""
RATE_HEADERS = web.RequestKey("rate_headers", dict)
"""x-ratelimit-* headers, for responses that send their headers early (SSE)."""
USAGE_TOKENS = web.RequestKey("usage_tokens", int)
"""Tokens the request used, set by the generation and embedding handlers."""


@dataclass(slots=True)
class KeyUsage:
    num_requests: int = 0
    num_tokens: int = 0
    num_rate_limited: int = 0
    recent: deque[tuple[float, int]] = field(default_factory=deque)
    """(time, tokens) of the requests in the last minute; tokens filled in when they finish."""


class KeyRing:
    """The accepted keys (flag, environment, key file) and what each has used."""

    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self.usage: dict[str, KeyUsage] = {}
        self._keys: dict[str, str] = {}
        self.reload()

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def reload(self) -> None:
        """Re-reads the key file (SIGHUP); keys removed from it stop working at once."""
        keys = {}
        if self._config.api_key:
            keys[self._config.api_key] = "default"
        if self._config.api_key_file:
            keys.update(read_key_file(Path(self._config.api_key_file)))
        self._keys = keys

    def identify(self, authorization: str) -> str | None:
        """The key id for an `Authorization: Bearer ...` header, or None. Constant-time compare."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        given = token.strip().encode()
        found = None
        for secret, key_id in self._keys.items():
            if hmac.compare_digest(given, secret.encode()):
                found = key_id
        return found

    def admit(self, key_id: str) -> dict[str, str]:
        """Counts a request against the key's limits; raises a 429 ApiError when over.

        Returns the x-ratelimit-* headers for the response."""
        rpm, tpm = self._config.rate_limit_rpm, self._config.rate_limit_tpm
        now = time.monotonic()
        with self._lock:
            usage = self.usage.setdefault(key_id, KeyUsage())
            while usage.recent and now - usage.recent[0][0] > WINDOW_S:
                usage.recent.popleft()
            requests = len(usage.recent)
            tokens = sum(t for _, t in usage.recent)
            reset_s = WINDOW_S - (now - usage.recent[0][0]) if usage.recent else 0.0
            headers = _headers(rpm, tpm, requests, tokens, reset_s)
            if (rpm and requests >= rpm) or (tpm and tokens >= tpm):
                usage.num_rate_limited += 1
                retry = str(max(1, math.ceil(reset_s)))
                raise ApiError(429, f"Rate limit reached for key {key_id!r}: {rpm or 'unlimited'} requests and "
                               f"{tpm or 'unlimited'} tokens per minute. Retry in {retry} s.",
                               type="rate_limit_error", code="rate_limit_exceeded",
                               headers={**headers, "Retry-After": retry})
            usage.recent.append((now, 0))
            usage.num_requests += 1
            return _headers(rpm, tpm, requests + 1, tokens, reset_s or WINDOW_S)

    def record_tokens(self, key_id: str, num_tokens: int) -> None:
        with self._lock:
            usage = self.usage.setdefault(key_id, KeyUsage())
            usage.num_tokens += num_tokens
            if usage.recent:
                at, tokens = usage.recent[-1]
                usage.recent[-1] = (at, tokens + num_tokens)

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {k: {"requests": u.num_requests, "tokens": u.num_tokens, "rate_limited": u.num_rate_limited}
                    for k, u in self.usage.items()}


def read_key_file(path: Path) -> dict[str, str]:
    """One key per line, `name:secret` or just `secret`; blank lines and # comments skipped."""
    keys = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        if not sep:
            name, secret = "key-" + hashlib.sha256(line.encode()).hexdigest()[:8], line
        keys[secret.strip()] = name.strip()
    return keys


def _headers(rpm: int, tpm: int, requests: int, tokens: int, reset_s: float) -> dict[str, str]:
    headers = {}
    if rpm:
        headers |= {"x-ratelimit-limit-requests": str(rpm),
                    "x-ratelimit-remaining-requests": str(max(0, rpm - requests)),
                    "x-ratelimit-reset-requests": f"{reset_s:.0f}s"}
    if tpm:
        headers |= {"x-ratelimit-limit-tokens": str(tpm),
                    "x-ratelimit-remaining-tokens": str(max(0, tpm - tokens)),
                    "x-ratelimit-reset-tokens": f"{reset_s:.0f}s"}
    return headers


KEYRING_KEY = web.AppKey("keyring", KeyRing)
_LIMITED_METHODS = {"POST"}  # generation and embeddings; reads like /v1/models are not counted


@web.middleware
async def auth_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Bearer keys on /v1/ and /admin/ (when any key is configured), then per-key limits on POSTs."""
    keyring = request.app[KEYRING_KEY]
    if not request.path.startswith(("/v1/", "/admin/")):
        return await handler(request)
    key_id = "anonymous"
    if keyring.enabled:
        key_id = keyring.identify(request.headers.get("Authorization", ""))
        if key_id is None:
            raise ApiError(401, "Incorrect or missing API key. Send 'Authorization: Bearer <key>'.",
                           type="authentication_error", code="invalid_api_key")
    request[KEY_ID] = key_id
    headers = request[RATE_HEADERS] = keyring.admit(key_id) if request.method in _LIMITED_METHODS else {}
    try:
        response = await handler(request)
    finally:
        keyring.record_tokens(key_id, request.get(USAGE_TOKENS, 0))
    if not response.prepared:  # streamed responses sent their headers already
        response.headers.update(headers)
    return response
