"""Running the server as a process: bind, serve, and shut down gracefully on SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from localllm.config import Config
from localllm.server.app import create_app
from localllm.server.auth import KEYRING_KEY

log = logging.getLogger(__name__)


def serve(config: Config) -> int:
    """Blocks until SIGTERM/SIGINT. aiohttp then stops accepting connections, waits up to
    drain_timeout_s for in-flight requests (streams included) to finish, and only then runs
    the cleanup that stops the engine; the process exits 0."""
    app = create_app(config)
    app.on_startup.append(_reload_keys_on_sighup)
    url = f"http://{config.server.host}:{config.server.port}/v1"
    print(f"localllm: serving {config.engine.model} on {url}", flush=True)
    web.run_app(app, host=config.server.host, port=config.server.port, print=None, access_log=None,
                shutdown_timeout=config.server.drain_timeout_s, handle_signals=True)
    log.info("localllm: stopped")
    return 0


async def _reload_keys_on_sighup(app: web.Application) -> None:
    """SIGHUP re-reads the API key file without dropping a request."""
    keyring = app[KEYRING_KEY]

    def reload() -> None:
        try:
            keyring.reload()
            log.info("SIGHUP: API keys reloaded")
        except (OSError, ValueError) as exc:
            log.error("SIGHUP: keeping the old API keys: %s", exc)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
