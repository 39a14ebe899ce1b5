"""Running the server as a process: bind, serve, and shut down gracefully on SIGTERM/SIGINT.

Under systemd (Type=notify, $NOTIFY_SOCKET set) it also tells the service manager when it
is ready, what it is doing (STATUS=), that the engine loop is alive (WATCHDOG=1), when it
reloads (SIGHUP) and when it stops.
"""
from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from localllm.config import Config
from localllm.models.catalogue import user_catalogue_path
from localllm.models.registry import CatalogueError, load_catalogue
from localllm.server.app import create_app
from localllm.server.auth import KEYRING_KEY, keys_configured
from localllm.server.browser_guard import is_loopback_address
from localllm.server.state import CONFIG_KEY, MODEL_KEY
from localllm.service.notify import Notifier, Watchdog, status_text, watchdog_interval_s
from localllm.types import EngineStats

log = logging.getLogger(__name__)

READY_POLL_S = 0.1
"""How often the READY check looks at the model while it loads."""
STATUS_EVERY_S = 1.0
"""How often STATUS= is refreshed (sent only when it changed)."""
FRESH_HEARTBEAT_S = 5.0
"""READY needs an engine heartbeat at most this old (the loop runs)."""
MIN_DRAIN_S = 0.01
"""aiohttp reads a shutdown timeout of 0 as "wait for every handler forever"; 0 means no drain."""


def serve(config: Config) -> int:
    """Blocks until SIGTERM/SIGINT. aiohttp then stops accepting connections, waits up to
    drain_timeout_s for in-flight requests (streams included) to finish, and only then runs
    the cleanup that stops the engine; the process exits 0."""
    if not faulthandler.is_enabled():
        faulthandler.enable()  # a segfault in llama.cpp leaves the Python stacks on stderr (the journal)
    app = create_app(config)
    notifier = Notifier.from_env()
    app.on_startup.append(_reload_on_sighup(notifier))
    if notifier is not None:
        app.cleanup_ctx.append(_systemd_lifecycle(notifier))
        app.on_shutdown.append(_notify_stopping(notifier))
    url = f"http://{config.server.host}:{config.server.port}/v1"
    print(f"localllm: serving {config.engine.model} on {url}", flush=True)
    warn_if_open(config)
    web.run_app(app, host=config.server.host, port=config.server.port, print=None, access_log=None,
                shutdown_timeout=max(config.server.drain_timeout_s, MIN_DRAIN_S), handle_signals=True)
    log.info("localllm: stopped")
    return 0


def warn_if_open(config: Config) -> None:
    """A keyless server on a non-loopback address answers anyone on the network."""
    server = config.server
    if not is_loopback_address(server.host) and not keys_configured(server):
        log.warning("WARNING: listening on %s with NO API KEY: anyone who can reach this address can use the "
                    "server. Set api_key / api_key_file, or bind 127.0.0.1.", server.host)


def _reload_on_sighup(notifier: Notifier | None) -> Callable[[web.Application], object]:
    async def install(app: web.Application) -> None:
        """SIGHUP re-reads the API key file and checks the model catalogue, without dropping a request."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload(app, notifier)))

    return install


async def reload(app: web.Application, notifier: Notifier | None = None) -> None:
    """What SIGHUP does. Nothing caches the catalogue (model routes and loads read
    data_dir/models.toml each time), so re-reading it here only reports errors early."""
    if notifier is not None:
        notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
    try:
        app[KEYRING_KEY].reload()
        log.info("SIGHUP: API keys reloaded")
    except (OSError, ValueError) as exc:
        log.error("SIGHUP: keeping the old API keys: %s", exc)
    path = user_catalogue_path(app[CONFIG_KEY])
    try:
        catalogue = await asyncio.to_thread(load_catalogue, path)
        log.info("SIGHUP: model catalogue re-read (%d models; user catalogue %s%s)", len(catalogue), path,
                 "" if path.is_file() else ", absent")
    except (OSError, CatalogueError) as exc:
        log.error("SIGHUP: the model catalogue is invalid, requests naming its models will fail: %s", exc)
    if notifier is not None:
        notifier.notify("READY=1")


def _notify_stopping(notifier: Notifier) -> Callable[[web.Application], object]:
    async def stopping(app: web.Application) -> None:
        """on_shutdown: listening sockets are closed; in-flight requests drain next."""
        notifier.notify("STOPPING=1", "STATUS=stopping: draining in-flight requests")

    return stopping


def _systemd_lifecycle(notifier: Notifier) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        models = app[MODEL_KEY]

        def stats() -> EngineStats | None:
            loaded = models.loaded
            return loaded.engine.stats() if loaded is not None else None

        interval_s = watchdog_interval_s()
        tasks = [asyncio.create_task(_announce(notifier, app, stats, interval_s))]
        if interval_s is not None:
            watchdog = Watchdog(interval_s, stats, starting=lambda: models.loaded is None and not models.error)
            tasks.append(asyncio.create_task(watchdog.run(notifier)))
            log.info("systemd watchdog: pinging every %.1f s while the engine loop is alive", interval_s / 2)
        yield  # the watchdog keeps pinging while requests drain
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        notifier.close()

    return lifecycle


async def _announce(notifier: Notifier, app: web.Application, stats: Callable[[], EngineStats | None],
                    interval_s: float | None) -> None:
    """READY=1 once the model is loaded and its engine loop runs; STATUS= whenever it changes."""
    models, name = app[MODEL_KEY], app[CONFIG_KEY].engine.model
    stall_s = interval_s or FRESH_HEARTBEAT_S
    ready, last_status = False, ""
    while True:
        snapshot = stats()
        alive = snapshot is not None and time.monotonic() - snapshot.loop_heartbeat_s < stall_s
        status = status_text(name, snapshot, error=models.error, alive=alive)
        messages = [f"STATUS={status}"] if status != last_status else []
        if not ready and alive and models.loaded is not None and models.loaded.engine.is_running:
            ready = True
            messages.insert(0, "READY=1")
            log.info("ready: %s", status)
        if messages:
            notifier.notify(*messages)
            last_status = status
        await asyncio.sleep(STATUS_EVERY_S if ready else READY_POLL_S)
