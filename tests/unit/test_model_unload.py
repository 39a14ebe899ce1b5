"""An unload cut short (a cancelled caller, a server shutting down mid-sweep) still stops the
engine to its end: no model is left off the manager's list with its memory never freed."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

from localllm.models.manager import ModelManager, ServedModel
from localllm.server.app import _models_lifecycle
from localllm.server.response_cache import RESPONSE_CACHE_KEY
from localllm.server.state import MODEL_KEY


class SlowEngine:
    """An engine whose stop waits for `release`, so a test can cut in while it runs."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.stopped = False

    async def stop(self) -> None:
        self.started.set()
        await self.release.wait()
        self.stopped = True


def manager_with_idle_model() -> tuple[ModelManager, SlowEngine, SlowEngine]:
    manager = ModelManager(SimpleNamespace(engine=SimpleNamespace(model="default")), loader=None)
    default_engine, engine = SlowEngine(), SlowEngine()
    manager.default.loaded = SimpleNamespace(name="default", path=Path("default.gguf"), engine=default_engine)
    idle = ServedModel("second", keep_alive_s=0.0)
    idle.loaded = SimpleNamespace(name="second", path=Path("second.gguf"), engine=engine)
    idle.last_used_s = time.monotonic() - 60
    manager.models.append(idle)
    return manager, engine, default_engine


async def test_a_cancelled_unload_still_stops_the_engine_and_close_waits_for_it():
    manager, engine, default_engine = manager_with_idle_model()
    default_engine.release.set()
    unload = asyncio.create_task(manager.unload("second"))
    await asyncio.wait_for(engine.started.wait(), 10)
    unload.cancel()
    await asyncio.gather(unload, return_exceptions=True)
    closing = asyncio.create_task(manager.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # waits for the stop the cancelled unload began
    engine.release.set()
    await asyncio.wait_for(closing, 10)
    assert engine.stopped and default_engine.stopped


class FakeCache:
    def close(self) -> None:
        pass


async def test_shutdown_waits_for_an_unload_the_keep_alive_sweeper_is_inside():
    manager, engine, default_engine = manager_with_idle_model()
    default_engine.release.set()
    app = {MODEL_KEY: manager, RESPONSE_CACHE_KEY: FakeCache()}
    lifecycle = _models_lifecycle(app)
    await anext(lifecycle)
    await asyncio.wait_for(engine.started.wait(), 10)  # the sweeper (every second) is unloading it
    shutdown = asyncio.create_task(anext(lifecycle, None))
    await asyncio.sleep(0.05)
    engine.release.set()
    await asyncio.wait_for(shutdown, 10)
    assert engine.stopped and default_engine.stopped
