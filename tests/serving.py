"""A real localllm server on loopback for a test module: one model load, one server."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp.test_utils import TestServer

from localllm.config import Config
from localllm.compose import load_model
from localllm.models.manager import LoadedModel
from localllm.server.app import create_app


def as_run_app_serves(server: TestServer) -> TestServer:
    """aiohttp's TestServer cancels a handler whose client hung up; web.run_app (production) does
    not: the handler runs on and must notice the hang-up itself. Tests serve the production way."""
    server.runner.server.handler_cancellation = False
    return server


@asynccontextmanager
async def served(config: Config) -> AsyncIterator[TestServer]:
    """Loads the configured model, serves it on 127.0.0.1, and stops both afterwards."""
    loaded = await load_model(config)
    try:
        async with serving(config, loaded) as server:
            yield server
    finally:
        await loaded.engine.stop()


@asynccontextmanager
async def serving(config: Config, loaded: LoadedModel, host: str = "127.0.0.1") -> AsyncIterator[TestServer]:
    """Serves an already loaded model under `config` on `host`; several apps (configs) can share
    one load in a module. The caller stops the engine."""
    server = TestServer(create_app(config, loaded=loaded), host=host)
    await server.start_server()
    as_run_app_serves(server)
    try:
        yield server
    finally:
        await server.close()
