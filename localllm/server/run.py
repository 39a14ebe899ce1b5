"""Running the server as a process: bind, serve, and shut down gracefully on SIGTERM/SIGINT."""
from __future__ import annotations

import logging

from aiohttp import web

from localllm.config import Config
from localllm.server.app import create_app

log = logging.getLogger(__name__)


def serve(config: Config) -> int:
    """Blocks until SIGTERM/SIGINT. aiohttp then stops accepting connections, waits up to
    drain_timeout_s for in-flight requests (streams included) to finish, and only then runs
    the cleanup that stops the engine; the process exits 0."""
    app = create_app(config)
    url = f"http://{config.server.host}:{config.server.port}/v1"
    print(f"localllm: serving {config.engine.model} on {url}", flush=True)
    web.run_app(app, host=config.server.host, port=config.server.port, print=None, access_log=None,
                shutdown_timeout=config.server.drain_timeout_s, handle_signals=True)
    log.info("localllm: stopped")
    return 0
