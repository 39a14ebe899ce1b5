"""The aiohttp application factory."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from localllm.config import Config
from localllm.models.manager import LoadedModel, load_model
from localllm.server import admin_routes, model_routes, openai_routes
from localllm.server.auth import KEYRING_KEY, KeyRing, auth_middleware
from localllm.server.errors import error_middleware
from localllm.server.metrics import METRICS_KEY, ServerMetrics
from localllm.server.state import CONFIG_KEY, MODEL_KEY, ModelHolder

log = logging.getLogger(__name__)

ModelLoader = Callable[[Config], Awaitable[LoadedModel]]


def create_app(config: Config, *, loaded: LoadedModel | None = None, loader: ModelLoader = load_model) -> web.Application:
    """Builds the server. With `loaded`, serves that already running engine and leaves
    it running on shutdown (tests share one model load); otherwise loads in the background."""
    middlewares = [error_middleware, auth_middleware]
    if config.server.cors_origins:
        middlewares.insert(0, cors_middleware(config.server.cors_origins))
    app = web.Application(client_max_size=config.server.max_body_bytes, middlewares=middlewares)
    app[CONFIG_KEY] = config
    holder = app[MODEL_KEY] = ModelHolder(loaded=loaded, owns_engine=loaded is None)
    keyring = app[KEYRING_KEY] = KeyRing(config.server)
    app[METRICS_KEY] = ServerMetrics(lambda: holder.loaded.engine.stats() if holder.loaded else None,
                                     keyring.snapshot)
    if loaded is None:
        app.cleanup_ctx.append(_model_lifecycle(loader))
    openai_routes.setup(app)
    admin_routes.setup(app)
    model_routes.setup(app)
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


def cors_middleware(origins: str):
    """Browser access for the configured origins only; preflight answered here."""
    allowed = {o.strip() for o in origins.split(",") if o.strip()}

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        ok = origin is not None and ("*" in allowed or origin in allowed)
        if request.method == "OPTIONS" and ok:
            response: web.StreamResponse = web.Response(status=204)
        else:
            response = await handler(request)
        if ok and not response.prepared:
            response.headers.update({
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Vary": "Origin",
            })
        return response

    return middleware
