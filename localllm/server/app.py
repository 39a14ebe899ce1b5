"""The aiohttp application factory."""
from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from localllm.config import Config
from localllm.models.manager import LoadedModel, load_model
from localllm.server import admin_routes, openai_routes
from localllm.server.errors import ApiError, error_middleware
from localllm.server.metrics import METRICS_KEY, ServerMetrics
from localllm.server.state import CONFIG_KEY, MODEL_KEY, ModelHolder

log = logging.getLogger(__name__)

ModelLoader = Callable[[Config], Awaitable[LoadedModel]]


def create_app(config: Config, *, loaded: LoadedModel | None = None, loader: ModelLoader = load_model) -> web.Application:
    """Builds the server. With `loaded`, serves that already running engine and leaves
    it running on shutdown (tests share one model load); otherwise loads in the background."""
    app = web.Application(client_max_size=config.server.max_body_bytes, middlewares=[error_middleware, _auth_middleware])
    app[CONFIG_KEY] = config
    holder = app[MODEL_KEY] = ModelHolder(loaded=loaded, owns_engine=loaded is None)
    app[METRICS_KEY] = ServerMetrics(lambda: holder.loaded.engine.stats() if holder.loaded else None)
    if loaded is None:
        app.cleanup_ctx.append(_model_lifecycle(loader))
    openai_routes.setup(app)
    admin_routes.setup(app)
    return app


def _model_lifecycle(loader: ModelLoader) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        holder = app[MODEL_KEY]

        async def load() -> None:
            try:
                holder.loaded = await loader(app[CONFIG_KEY])
            except Exception as exc:  # the server stays up and says why on /ready
                log.exception("model load failed")
                holder.error = str(exc)

        task = asyncio.create_task(load())  # /health answers while the model loads
        yield
        if not task.done():
            await task  # a load in a worker thread cannot be interrupted; let it land, then free it
        if holder.loaded is not None and holder.owns_engine:
            await holder.loaded.engine.stop()
            holder.loaded = None

    return lifecycle


@web.middleware
async def _auth_middleware(request: web.Request, handler) -> web.StreamResponse:
    key = request.app[CONFIG_KEY].server.api_key
    if key and request.path.startswith("/v1/"):
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "Incorrect or missing API key. Send 'Authorization: Bearer <key>'.",
                           type="authentication_error", code="invalid_api_key")
    return await handler(request)
