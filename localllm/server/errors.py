"""OpenAI-shaped errors and the middleware that renders every failure as one."""
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

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)


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
    """Turns ApiError, aiohttp's HTTP errors and anything unexpected into OpenAI errors."""
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
    return error.response()
