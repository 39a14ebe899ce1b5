"""The aiohttp application factory."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from localllm.cache.response_cache import ResponseCache, ResponseCacheConfig
from localllm.config import Config
from localllm.compose import load_model
from localllm.models.manager import LoadedModel, ModelLoader, ModelManager
from localllm.server import (
    admin_routes, anthropic_routes, misc_routes, model_routes, ollama_routes, openai_routes, responses_routes,
)
from localllm.server.auth import KEYRING_KEY, KeyRing, auth_middleware
from localllm.server.browser_guard import browser_guard, is_listed, listed_origins
from localllm.server.errors import error_middleware
from localllm.server.metrics import METRICS_KEY, ServerMetrics
from localllm.server.response_cache import RESPONSE_CACHE_KEY
from localllm.server.request_log import request_log_middleware
from localllm.server.state import CONFIG_KEY, MODEL_KEY

log = logging.getLogger(__name__)


def create_app(config: Config, *, loaded: LoadedModel | None = None, loader: ModelLoader = load_model) -> web.Application:
    """Builds the server. With `loaded`, serves that already running engine as the default
    model and leaves it running on shutdown (tests share one model load); otherwise the
    default model loads in the background while /health already answers."""
    keyring = KeyRing(config.server)  # first: a key source without keys is a ConfigError (fail closed)
    middlewares = [error_middleware, browser_guard(config.server), auth_middleware,  # guard: Host, Origin
                   misc_routes.unknown_route_middleware]
    origins = listed_origins(config.server.cors_origins)
    if origins:
        middlewares.insert(0, cors_middleware(origins))
    middlewares.insert(0, request_log_middleware)  # outermost: logs the final status
    app = web.Application(client_max_size=config.server.max_body_bytes, middlewares=middlewares)
    if origins:
        app.on_response_prepare.append(cors_headers(origins))
    app[CONFIG_KEY] = config
    keep_alive = None if config.server.keep_alive_s < 0 else config.server.keep_alive_s
    manager = app[MODEL_KEY] = ModelManager(config, loader, keep_alive)
    if loaded is not None:
        manager.adopt(loaded)
    app[KEYRING_KEY] = keyring
    cache = app[RESPONSE_CACHE_KEY] = ResponseCache(ResponseCacheConfig(
        config.cache_dir / "responses", config.server.cache_size_mib * 2**20, config.server.cache_ttl_s,
        config.server.cache_enabled))
    app[METRICS_KEY] = ServerMetrics(lambda: manager.loaded.engine.stats() if manager.loaded else None,
                                     keyring.snapshot, cache.stats)
    app.cleanup_ctx.append(_models_lifecycle)
    openai_routes.setup(app)
    anthropic_routes.setup(app)
    admin_routes.setup(app)
    model_routes.setup(app)
    misc_routes.setup(app)
    responses_routes.setup(app)
    ollama_routes.setup(app)
    return app


async def _models_lifecycle(app: web.Application) -> AsyncIterator[None]:
    manager = app[MODEL_KEY]
    if manager.loaded is None:
        manager.start_load(manager.default.ref).task.add_done_callback(_log_load_failure)  # /ready says why

    stopping = asyncio.Event()

    async def sweep_forever() -> None:
        while not stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1.0)
            if not stopping.is_set():
                await manager.sweep()

    sweeper = asyncio.create_task(sweep_forever())
    yield
    stopping.set()  # never cancelled: an unload it is inside finishes before close() looks at the models
    await asyncio.gather(sweeper, return_exceptions=True)
    await manager.close()
    app[RESPONSE_CACHE_KEY].close()


def _log_load_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the default model failed to load: %s", task.exception())


def cors_middleware(allowed: frozenset[str]):
    """Browser access for the configured origins only; preflight answered here. The headers
    go on in on_response_prepare (cors_headers): streamed answers send theirs before any
    middleware sees the response."""

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        if request.method == "OPTIONS" and _listed_origin(request, allowed) is not None:
            return web.Response(status=204)
        return await handler(request)

    return middleware


def cors_headers(allowed: frozenset[str]):
    """The on_response_prepare hook that adds the CORS headers for a listed Origin."""

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        origin = _listed_origin(request, allowed)
        if origin is not None:
            response.headers.update({
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Headers": "Authorization, Content-Type, x-api-key, anthropic-version",
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Vary": "Origin",
            })

    return add


def _listed_origin(request: web.Request, allowed: frozenset[str]) -> str | None:
    origin = request.headers.get("Origin")
    return origin if origin is not None and is_listed(origin, allowed) else None
