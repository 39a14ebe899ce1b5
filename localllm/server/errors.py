"""API errors and the middleware that renders every failure in the shape of the protocol it came in on."""
from __future__ import annotations

import logging

from aiohttp import web

from localllm.engine.errors import BackendError
from localllm.models.manager import ModelLoadFailed
from localllm.models.registry import CatalogueError
from localllm.server.metrics import METRICS_KEY

log = logging.getLogger(__name__)

CLIENT_CLOSED = web.RequestKey("client_closed", bool)
"""Set when the client hung up before the answer was complete: logged as 499, not an error."""


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class ApiError(Exception):
    """An error the client should see: HTTP status plus OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self, protocol: str = "openai") -> dict:
        """The error body in `protocol`'s shape (see `protocol_of`)."""
        if protocol == "anthropic":
            return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(self.status, "api_error"),
                                               "message": self.message}}
        if protocol == "ollama":
            return {"error": self.message}
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, protocol: str = "openai") -> web.Response:
        return web.json_response(self.body(protocol), status=self.status, headers=self.headers)


PROTOCOLS = ("openai", "anthropic", "ollama")
PROTOCOL = web.RequestKey("protocol", str)
"""Which protocol adapter served a request: "openai.chat", "openai.completions", "openai.responses",
"anthropic", "ollama" (set by server/chat_path.py and the adapters); the request log, metrics and
per-key usage name it. Unset: `protocol_of(path)` says which family of routes it was."""


def protocol_of(path: str) -> str:
    """Which protocol's error shape a path answers in: Anthropic's Messages API, Ollama's
    /api/*, else OpenAI's (every other route, including unknown paths)."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    if path.startswith("/api/"):
        return "ollama"
    return "openai"


_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 415: "invalid_request_error",
                    429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


_STATUS_TYPES = {
    401: ("authentication_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Turns ApiError, aiohttp's HTTP errors and anything unexpected into errors in the shape of the
    request's protocol (OpenAI's, Anthropic's or Ollama's)."""
    try:
        return await handler(request)
    except ApiError as exc:
        error = exc
    except (ModelLoadFailed, BackendError) as exc:  # e.g. unloaded between finding it and leasing it, or
        # while a worker tokenised for it (BackendClosed)
        error = ApiError(503, f"The model is not available: {exc}", type="server_error", code="model_not_ready",
                         headers={"Retry-After": "1"})
    except CatalogueError as exc:  # the operator's models.toml, re-read per request, is malformed
        log.error("the model catalogue is invalid: %s", exc)
        error = ApiError(503, "The server's model catalogue is invalid; the operator must fix it (the server "
                         "log says where).", type="server_error", code="catalogue_invalid")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind, code = _STATUS_TYPES.get(exc.status, ("invalid_request_error", None))
        message = exc.reason if exc.status != 413 else "Request body too large."
        error = ApiError(exc.status, message, type=kind, code=code)
    except Exception as exc:
        if isinstance(exc, ConnectionError) and client_gone(request):
            request[CLIENT_CLOSED] = True
            raise  # nobody to answer; the request log records 499, without a traceback
        log.exception("unhandled error in %s %r", request.method, request.path)  # %r: no forged lines
        error = ApiError(500, "Internal server error.", type="server_error")
    metrics = request.app.get(METRICS_KEY)
    if metrics is not None:
        metrics.errors.labels(error.type, str(error.status)).inc()
    return error.response(protocol_of(request.path))
