"""One log line per request: id, model, tokens, TTFT, duration, status, key id. Never the prompt
unless `log_prompts` is on and the level is debug.

The middleware reads what the handlers leave on the request; the keys below are for them:
`KEY_ID` and `USAGE_TOKENS` (auth.py) already exist; generation handlers set `MODEL_NAME`,
`PROMPT_TOKENS`, `COMPLETION_TOKENS`, `TTFT_S` and `PROTOCOL` (seconds from receipt to the first token)
when they know them, and may replace `REQUEST_ID` by their completion id. Missing values
print as `-`.
"""
from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time

from aiohttp import web

from localllm.server.auth import KEY_ID, USAGE_TOKENS
from localllm.server.errors import CLIENT_CLOSED, PROTOCOL, protocol_of
from localllm.server.metrics import METRICS_KEY
from localllm.server.state import CONFIG_KEY

log = logging.getLogger("localllm.requests")

REQUEST_ID = web.RequestKey("request_id", str)
"""The id in the log line: the client's X-Request-Id (sanitised) or a generated one."""
RECEIVED_S = web.RequestKey("received_s", float)
"""time.monotonic() when the middleware saw the request (for TTFT in the handlers)."""
MODEL_NAME = web.RequestKey("log_model", str)
PROMPT_TOKENS = web.RequestKey("prompt_tokens", int)
COMPLETION_TOKENS = web.RequestKey("completion_tokens", int)
TTFT_S = web.RequestKey("ttft_s", float)
"""Seconds from RECEIVED_S to the first generated token."""

QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})
"""Probes and scrapes: logged at debug level only."""
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
CLIENT_GONE = 499
"""nginx's status for a client that closed the connection before the answer was complete."""
_ALWAYS_ESCAPED = r"\x7f-\xa0\\\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff"
"""DEL, C1 controls, NBSP, backslash, line/paragraph separators, zero-width and bidi marks, BOM."""
_UNSAFE_TEXT_RE = re.compile(rf"[\x00-\x1f{_ALWAYS_ESCAPED}]")
_UNSAFE_RE = re.compile(rf"[\x00-\x20{_ALWAYS_ESCAPED}]")  # fields: the space too (it separates them)


def request_id_for(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id", "")
    return given if _CLIENT_ID_RE.match(given) else "req-" + secrets.token_hex(6)


@web.middleware
async def request_log_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Outermost middleware: sees the final status after errors became responses."""
    request[RECEIVED_S] = started = time.monotonic()
    request[REQUEST_ID] = request_id_for(request)
    status = 500
    try:
        response = await handler(request)
        status = CLIENT_GONE if request.get(CLIENT_CLOSED) else response.status
        if not response.prepared:
            response.headers.setdefault("X-Request-Id", request[REQUEST_ID])
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except ConnectionError:  # the client hung up (errors.py re-raises only then): nobody to answer
        status = CLIENT_GONE
        return web.Response(status=CLIENT_GONE, reason="Client Closed Request")
    except asyncio.CancelledError:
        status = CLIENT_GONE
        raise
    finally:
        _log_request(request, status, time.monotonic() - started)
        metrics = request.app.get(METRICS_KEY)
        if status == CLIENT_GONE and metrics is not None:
            metrics.client_disconnects.inc()


def _api_family(path: str) -> str | None:
    """The protocol family of an API path refused before its adapter named it (401, 403, 415...)."""
    return protocol_of(path) if path.startswith(("/v1/", "/api/")) else None


def format_line(request: web.Request, status: int, duration_s: float) -> str:
    """`id=... method=... path=... protocol=... status=... model=... key=... prompt_tokens=... ...`."""
    ttft_s = request.get(TTFT_S)
    fields = {
        "id": request.get(REQUEST_ID),
        "method": request.method,
        "path": request.path,
        "protocol": request.get(PROTOCOL) or _api_family(request.path),
        "status": status,
        "model": request.get(MODEL_NAME),
        "key": request.get(KEY_ID),
        "prompt_tokens": request.get(PROMPT_TOKENS),
        "completion_tokens": request.get(COMPLETION_TOKENS),
        "tokens": request.get(USAGE_TOKENS),
        "ttft_ms": None if ttft_s is None else f"{ttft_s * 1000:.0f}",
        "duration_ms": f"{duration_s * 1000:.0f}",
    }
    return " ".join(f"{k}={'-' if v is None else escape(str(v))}" for k, v in fields.items())


def escape(text: str, *, keep_spaces: bool = False) -> str:
    """Control characters, whitespace and backslashes as escapes, so a field (a decoded path with
    %0A or %1B, a header) can neither forge a log line nor a `key=value` field."""
    return (_UNSAFE_TEXT_RE if keep_spaces else _UNSAFE_RE).sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return "\\\\" if char == "\\" else f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def _log_request(request: web.Request, status: int, duration_s: float) -> None:
    level = logging.DEBUG if request.path in QUIET_PATHS else (
        logging.WARNING if status >= 500 else logging.INFO)
    if log.isEnabledFor(level):
        log.log(level, "request %s", format_line(request, status, duration_s))
    config = request.app.get(CONFIG_KEY)
    if config is not None and config.server.log_prompts and log.isEnabledFor(logging.DEBUG):
        body = getattr(request, "_read_bytes", None)  # what the handler read; never read it here
        if body:
            log.debug("request %s body: %s", request.get(REQUEST_ID), escape(body[:4096].decode("utf-8", "replace"), keep_spaces=True))
