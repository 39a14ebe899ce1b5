"""The served-model record the server sees (`LoadedModel`) and the ModelManager that serves
several by name: one load per model however many requests ask, keep-alive unloads, explicit
load/unload. Pure asyncio: the loader that builds a model (localllm/compose.py) is injected."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from localllm.config import Config

if TYPE_CHECKING:
    from localllm.engine.async_engine import AsyncEngine
    from localllm.models.registry import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model being served, as the server sees it: its engine and what the routes need to
    render prompts and key caches. Built by localllm/compose.py (or a test's loader)."""

    name: str
    path: Path
    spec: ModelSpec | None
    engine: AsyncEngine
    chat_template: str | None
    """Jinja source: the catalogue's override, else the GGUF's own, else None."""
    bos_token: str
    eos_token: str
    load_s: float
    identity: str = ""
    """What makes this model's answers this model's: the file's sha256 when known, else path+size+mtime."""


ModelLoader = Callable[..., Awaitable[LoadedModel]]
"""compose.load_model's signature: (config, on_progress) -> LoadedModel."""


@dataclass(eq=False, slots=True)
class ServedModel:
    """One model the manager knows: loading, loaded, or failed."""

    ref: str
    """What requests asked for: a catalogue name or a .gguf path."""
    loaded: LoadedModel | None = None
    task: asyncio.Task | None = None
    error: str | None = None
    progress: float = 0.0
    in_flight: int = 0
    last_used_s: float = field(default_factory=time.monotonic)
    keep_alive_s: float | None = None
    """Idle seconds before unloading; None keeps it loaded."""

    @property
    def status(self) -> str:
        return "loaded" if self.loaded else "failed" if self.error else "loading"

    def answers_to(self, ref: str) -> bool:
        loaded = self.loaded
        return ref == self.ref or (loaded is not None and ref in (loaded.name, loaded.path.name, str(loaded.path)))


class ModelManager:
    """Models served by name. The default model loads at start and stays; others load on
    their first request (one load per model, however many requests wait for it) and
    unload after `keep_alive_s` idle seconds with no request in flight."""

    def __init__(self, config: Config, loader: ModelLoader, keep_alive_s: float | None = 300.0) -> None:
        self.config = config
        self._loader = loader
        self.default_keep_alive_s = keep_alive_s
        self.default = ServedModel(config.engine.model)
        self.models: list[ServedModel] = [self.default]
        self.owns_default = True

    # The default model, as the single-model server knew it (health, metrics, systemd).
    @property
    def loaded(self) -> LoadedModel | None:
        return self.default.loaded

    @property
    def error(self) -> str | None:
        return self.default.error

    def adopt(self, loaded: LoadedModel) -> None:
        """Serves an engine someone else started and will stop (tests share one load)."""
        self.default.loaded, self.owns_default = loaded, False

    def find(self, ref: str | None) -> ServedModel | None:
        if ref is None:
            return self.default
        return next((m for m in self.models if m.answers_to(ref)), None)

    def start_load(self, ref: str) -> ServedModel:
        """Begins loading `ref` unless it is known already; never two loads of one model."""
        model = self.find(ref)
        if model is None:
            model = ServedModel(ref, keep_alive_s=self.default_keep_alive_s)
            self.models.append(model)
        if model.loaded is None and (model.task is None or model.task.done()):
            model.error = None
            model.task = asyncio.create_task(self._load(model))
        return model

    async def get(self, ref: str | None) -> LoadedModel:
        """The loaded model for `ref`, loading it first if needed. Raises what the load raised."""
        model = self.start_load(ref) if ref is not None else self.default
        if model.loaded is None:
            if model is self.default and model.task is None:
                model = self.start_load(model.ref)
            await asyncio.shield(model.task)
        if model.loaded is None:
            raise ModelLoadFailed(model.error or "the model is not loaded")
        return model.loaded

    async def _load(self, model: ServedModel) -> None:
        loop = asyncio.get_running_loop()
        report = lambda f: loop.call_soon_threadsafe(setattr, model, "progress", f)  # noqa: E731
        try:
            model.loaded = await self._loader(self.config.with_engine(model=model.ref), report)
            model.progress = 1.0
        except Exception as exc:
            log.warning("loading %s failed: %s", model.ref, exc)
            model.error = str(exc)
            if model is not self.default:
                self.models.remove(model)
            raise

    def lease(self, loaded: LoadedModel, keep_alive_s: float | None = None) -> _Lease:
        return _Lease(next(m for m in self.models if m.loaded is loaded), keep_alive_s)

    async def unload(self, ref: str) -> bool:
        """Stops an idle model's engine. False if it is busy or not loaded."""
        model = self.find(ref)
        if model is None or model.loaded is None or model.in_flight:
            return False
        loaded, model.loaded = model.loaded, None
        if model is not self.default:
            self.models.remove(model)
        if model is not self.default or self.owns_default:
            await loaded.engine.stop()
        log.info("unloaded %s", loaded.name)
        return True

    async def sweep(self) -> None:
        """Unloads models idle past their keep-alive; the server runs this every second."""
        now = time.monotonic()
        for model in list(self.models):
            idle = model.in_flight == 0 and model.loaded is not None and model is not self.default
            if idle and model.keep_alive_s is not None and now - model.last_used_s > model.keep_alive_s:
                await self.unload(model.ref)

    async def close(self) -> None:
        for model in list(self.models):
            if model.task is not None and not model.task.done():
                await asyncio.gather(model.task, return_exceptions=True)  # a load cannot be interrupted
            if model.loaded is not None and (model is not self.default or self.owns_default):
                await model.loaded.engine.stop()
            model.loaded = None


class ModelLoadFailed(RuntimeError):
    pass


class _Lease:
    """Marks a model busy for one request, so keep-alive never unloads it mid-request."""

    def __init__(self, model: ServedModel, keep_alive_s: float | None) -> None:
        self._model = model
        self._keep_alive_s = keep_alive_s

    def __enter__(self) -> _Lease:
        self._model.in_flight += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._model.in_flight -= 1
        self._model.last_used_s = time.monotonic()
        if self._keep_alive_s is not None:
            self._model.keep_alive_s = None if self._keep_alive_s < 0 else self._keep_alive_s
