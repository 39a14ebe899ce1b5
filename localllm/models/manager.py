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

MIN_REQUEST_KEEP_ALIVE_S = 30.0
"""A request's keep_alive below this (Ollama's 0: unload now) is raised to it, so a stream of
such requests cannot make the server load and unload a model for each one."""


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
    created: int = 0
    """Unix time of the model file when it was loaded (/v1/models' `created`; the file may go later)."""

    tool_use_template: str | None = None
    """The GGUF's `tokenizer.chat_template.tool_use` (Hermes 2 Pro, Command R carry one): llama.cpp
    renders requests with tools with it. None when absent or when the catalogue sets the template."""

    @property
    def template_family(self) -> str | None:
        """models.toml's `template_family` override for compiled_template; None: detect it."""
        return self.spec.template_family if self.spec is not None else None

    def template_source(self, *, tools: bool) -> str | None:
        """The Jinja source to render a chat with: the tool-use variant for a request with tools
        where the model file has one, else `chat_template`."""
        return self.tool_use_template if tools and self.tool_use_template else self.chat_template


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
    """Models served by name. The default model loads at start and stays (it cannot be
    unloaded); others load on their first request (one load per model, however many requests
    wait for it) and unload after `keep_alive_s` idle seconds with no request in flight, or
    when a new model needs room past `max_loaded_models` (least recently used idle first)."""

    def __init__(self, config: Config, loader: ModelLoader, keep_alive_s: float | None = 300.0) -> None:
        self.config = config
        self._loader = loader
        self.default_keep_alive_s = keep_alive_s
        self.default = ServedModel(config.engine.model)
        self.models: list[ServedModel] = [self.default]
        self.owns_default = True
        self._stops: set[asyncio.Future[None]] = set()
        """Engine stops begun by `unload`; a cancelled unload leaves its stop running here."""

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
        """Begins loading `ref` unless it is known already; never two loads of one model.
        Raises NoRoomForModel when max_loaded_models are loaded and none of them is idle."""
        model = self.find(ref)
        evicted = None
        if model is None:
            evicted = self._make_room()
            model = ServedModel(ref, keep_alive_s=self.default_keep_alive_s)
            self.models.append(model)
        if model.loaded is None and (model.task is None or model.task.done()):
            model.error = None
            model.task = asyncio.create_task(self._load(model, evicted))
        return model

    def _make_room(self) -> LoadedModel | None:
        """Changes state: below max_loaded_models, nothing; else takes the least recently used
        idle model (never the default) out of the list and returns it for _load to stop."""
        if len(self.models) < self.config.server.max_loaded_models:
            return None
        idle = [m for m in self.models if m is not self.default and m.loaded is not None and m.in_flight == 0]
        if not idle:
            raise NoRoomForModel(f"{len(self.models)} models are loaded or loading (max_loaded_models) "
                                 "and every one of them is serving requests")
        victim = min(idle, key=lambda m: m.last_used_s)
        self.models.remove(victim)
        loaded, victim.loaded = victim.loaded, None
        return loaded

    async def get(self, ref: str | None) -> LoadedModel:
        """The loaded model for `ref`, loading it first if needed. Raises what the load raised."""
        model = self.start_load(ref) if ref is not None else self.default
        if model.loaded is None:
            if model is self.default and (model.task is None or model.task.done()):
                model = self.start_load(model.ref)  # first load, or a retry after a failed one
            await asyncio.shield(model.task)
        if model.loaded is None:
            raise ModelLoadFailed(model.error or "the model is not loaded")
        return model.loaded

    async def _load(self, model: ServedModel, evicted: LoadedModel | None = None) -> None:
        loop = asyncio.get_running_loop()
        report = lambda f: loop.call_soon_threadsafe(setattr, model, "progress", f)  # noqa: E731
        try:
            if evicted is not None:  # its memory is free before the new model takes it
                log.info("unloading %s to make room for %s (max_loaded_models)", evicted.name, model.ref)
                await evicted.engine.stop()
            model.loaded = await self._loader(self.config.with_engine(model=model.ref), report)
            model.progress = 1.0
        except Exception as exc:
            log.warning("loading %s failed: %s", model.ref, exc)
            model.error = str(exc)
            if model is not self.default:
                self.models.remove(model)
            raise

    def lease(self, loaded: LoadedModel, keep_alive_s: float | None = None) -> _Lease:
        """Marks `loaded` busy for one request; afterwards it stays loaded for the request's
        `keep_alive_s` (clamped to the operator's limits), else for the model's current one.
        ModelLoadFailed if the model was unloaded since the request found it."""
        model = next((m for m in self.models if m.loaded is loaded), None)
        if model is None:
            raise ModelLoadFailed(f"the model {loaded.name!r} was unloaded; try again")
        return _Lease(model, None if keep_alive_s is None else self.clamp_keep_alive(keep_alive_s))

    def clamp_keep_alive(self, keep_alive_s: float) -> float:
        """A request's keep_alive within the operator's limits: negative ("forever") and
        anything past max_keep_alive_s become max_keep_alive_s; below the floor, the floor."""
        ceiling = self.config.server.max_keep_alive_s
        wanted = ceiling if keep_alive_s < 0 else keep_alive_s
        return max(min(wanted, ceiling), min(MIN_REQUEST_KEEP_ALIVE_S, ceiling))

    async def unload(self, ref: str) -> bool:
        """Stops an idle model's engine. False if it is busy, not loaded, or the default
        (which serves /ready and unnamed requests, so it stays)."""
        model = self.find(ref)
        if model is None or model.loaded is None or model.in_flight or model is self.default:
            return False
        loaded, model.loaded = model.loaded, None
        self.models.remove(model)
        stop = asyncio.ensure_future(loaded.engine.stop())
        self._stops.add(stop)
        stop.add_done_callback(self._stops.discard)
        await asyncio.shield(stop)  # cancelled here, the stop still runs to its end; close() waits for it
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
        await asyncio.gather(*self._stops, return_exceptions=True)  # unloads whose caller was cancelled
        for model in list(self.models):
            if model.task is not None and not model.task.done():
                await asyncio.gather(model.task, return_exceptions=True)  # a load cannot be interrupted
            if model.loaded is not None and (model is not self.default or self.owns_default):
                await model.loaded.engine.stop()
            model.loaded = None


class ModelLoadFailed(RuntimeError):
    pass


class NoRoomForModel(RuntimeError):
    """max_loaded_models are loaded and all serve requests: try again when one is idle."""


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
            self._model.keep_alive_s = self._keep_alive_s
