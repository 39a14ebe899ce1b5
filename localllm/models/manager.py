"""Loading models into engines, and the ModelManager that serves several by name:
one load per model however many requests ask, keep-alive unloads, explicit load/unload."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from localllm.cache.kv_store import KvPrefixStore, KvStoreConfig
from localllm.config import Config
from localllm.engine.async_engine import AsyncEngine
from localllm.engine.llama_backend import BackendConfig, LlamaBackend, rpc
from localllm.engine.llama_backend.rpc import DeviceInfo
from localllm.models.plan import ModelFacts, Plan, make_plan
from localllm.models.registry import ModelSpec, load_catalogue
from localllm.models.store import ModelStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadedModel:
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


def user_catalogue_path(config: Config) -> Path:
    return config.data_dir / "models.toml"


def local_model_names(config: Config) -> list[str]:
    """Catalogue models usable without a download: bundled, placed in the store, or pulled."""
    store = ModelStore(config.data_dir, load_catalogue(user_catalogue_path(config)))
    names = {name for name, spec in store.catalogue.items()
             if spec.bundled or (spec.file and (store.models_dir / name / spec.file).is_file())}
    return sorted(names | set(store.pulled_names()))


def open_backend(config: Config, on_progress: Callable[[float], None] | None = None,
                 ) -> tuple[LlamaBackend, str, Path, ModelSpec | None]:
    """Blocking: resolves the model file (assembling the bundled one if needed) and loads it."""
    store = ModelStore(config.data_dir, load_catalogue(user_catalogue_path(config)))
    path, spec = store.resolve(config.engine.model)
    engine_config = config.engine
    backend = LlamaBackend(BackendConfig(
        model_path=path,
        num_ctx=engine_config.ctx,
        num_seq=engine_config.parallel,
        num_batch=engine_config.batch,
        num_threads=engine_config.num_threads,
        num_gpu_layers=gpu_layers_for(path, config),
        on_progress=on_progress,
        rpc_servers=engine_config.rpc_servers,
        swa_full=engine_config.swa_full,
    ))
    name = spec.name if spec else path.stem
    return backend, name, path, spec


def engine_for(backend: LlamaBackend, name: str, config: Config, identity: str | None = None) -> AsyncEngine:
    """An engine over `backend`; with `identity` (the model's), long prompts' KV states persist on disk."""
    store = None
    if identity is not None and config.server.kv_cache_min_tokens > 0:
        store = KvPrefixStore(KvStoreConfig(
            config.cache_dir / "kv", namespace=f"{identity}|{backend.state_format()}",
            min_tokens=config.server.kv_cache_min_tokens, size_limit_bytes=config.server.kv_cache_size_mib * 2**20))
    return AsyncEngine(
        backend,
        model_name=name,
        num_slots=config.engine.parallel,
        slot_ctx=backend.num_ctx // config.engine.parallel,
        num_batch_tokens=config.engine.batch,
        num_kv_cells_total=backend.num_ctx,
        max_waiting=config.engine.max_waiting,
        prefix_store=store,
    )


@dataclass(frozen=True, slots=True)
class OffloadPlan:
    plan: Plan
    num_layers: int
    devices: list[DeviceInfo]
    """rpc-servers' devices (then local GPUs) the layers spread over; empty without --rpc."""

    @property
    def n_gpu_layers(self) -> int:
        """For llama.cpp: -1 when every block fits (llama.cpp offloads the output layer only past
        the block count: measured on an H100, 204 tok/s against 105 with it on the CPU)."""
        return -1 if self.plan.n_gpu_layers >= self.num_layers else self.plan.n_gpu_layers

    @property
    def layer_split(self) -> dict[str, int]:
        """Layers per device label (output layer included; the rest on "CPU"); empty without --rpc."""
        return rpc.layer_split(self.devices, self.num_layers, self.n_gpu_layers) if self.devices else {}

    def to_dict(self) -> dict:
        out = json.loads(self.plan.to_json())
        if self.devices:
            out["devices"] = [{"name": d.label, "free_bytes": d.free_bytes, "total_bytes": d.total_bytes}
                              for d in self.devices]
            out["layer_split"] = self.layer_split
        return out

    def explain(self) -> str:
        text = self.plan.explain()
        if self.devices:
            text += "\nlayers per device (by free memory, as llama.cpp splits them): " + ", ".join(
                f"{label} {count}" for label, count in self.layer_split.items())
        return text


def offload_plan(path: Path, config: Config) -> OffloadPlan:
    """Blocking: the memory plan for `path` over free VRAM, or over local VRAM plus the free
    memory of the configured rpc-servers (registered here; BackendError if one is unreachable)."""
    from localllm.models.gguf import read_gguf
    from localllm.models.probe import free_ram_bytes, free_vram_bytes

    vram = free_vram_bytes()
    if config.engine.vram_budget_mib:
        vram = min(vram, config.engine.vram_budget_mib * 2**20)
    devices: list[DeviceInfo] = []
    if config.engine.rpc_servers:
        devices = rpc.offload_devices(rpc.add_servers(config.engine.rpc_servers))
        vram += sum(d.free_bytes for d in devices if d.endpoint)  # local GPUs are in `vram` already
    facts = ModelFacts.from_gguf(read_gguf(path))
    # allow_q8_kv=False: the engine allocates an f16 KV cache, so the plan must budget for f16.
    plan = make_plan(facts, free_vram_bytes=vram, free_ram_bytes=free_ram_bytes(), slots=config.engine.parallel,
                     ctx=config.engine.ctx, num_batch=config.engine.batch, allow_q8_kv=False)
    return OffloadPlan(plan, facts.num_layers, devices)


def gpu_layers_for(path: Path, config: Config) -> int:
    """An explicit --n-gpu-layers wins; `auto` asks the memory plan what fits free VRAM now
    (and the rpc-servers' free memory with --rpc)."""
    if config.engine.n_gpu_layers is not None:
        return config.engine.n_gpu_layers
    if not config.engine.rpc_servers:
        from localllm.models.probe import free_vram_bytes

        if free_vram_bytes() == 0:
            return 0  # no GPU: nothing to plan
    offload = offload_plan(path, config)
    log.info("memory plan for %s:\n%s", path.name, offload.explain())
    return offload.n_gpu_layers


async def load_model(config: Config, on_progress: Callable[[float], None] | None = None) -> LoadedModel:
    """Loads in a worker thread, then starts the engine thread on this event loop."""
    started = time.monotonic()
    backend, name, path, spec = await asyncio.to_thread(open_backend, config, _logging_progress(config, on_progress))
    identity = model_identity(path, spec)
    engine = engine_for(backend, name, config, identity)
    await engine.start()
    template = (spec.chat_template if spec else None) or backend.metadata("tokenizer.chat_template")
    load_s = time.monotonic() - started
    log.info("loaded %s (%s) in %.1f s: %d slots, %d KV cells, %d threads",
             name, backend.describe(), load_s, config.engine.parallel, backend.num_ctx, config.engine.num_threads)
    return LoadedModel(name, path, spec, engine, template, backend.bos_text(), backend.eos_text(), load_s,
                       identity)


def _logging_progress(config: Config, forward: Callable[[float], None] | None) -> Callable[[float], None]:
    """Logs the load at each quarter (the log and the terminal show progress) and forwards it."""
    logged = [-1]

    def report(fraction: float) -> None:
        quarter = int(fraction * 4)
        if quarter > logged[0]:
            logged[0] = quarter
            log.info("loading %s: %d%%", config.engine.model, quarter * 25)
        if forward is not None:
            forward(fraction)

    return report


def model_identity(path: Path, spec: ModelSpec | None) -> str:
    digest = spec.sha256_for(spec.quant) if spec is not None else None
    if digest:
        return f"sha256:{digest}"
    stat = path.stat()
    return f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


ModelLoader = Callable[..., Awaitable[LoadedModel]]
"""load_model's signature: (config, on_progress) -> LoadedModel."""


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

    def __init__(self, config: Config, loader: ModelLoader = load_model, keep_alive_s: float | None = 300.0) -> None:
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
