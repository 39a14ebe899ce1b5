"""Loading a model into a running engine (one load at a time, off the event loop)."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from localllm.config import Config
from localllm.engine.async_engine import AsyncEngine
from localllm.engine.llama_backend import BackendConfig, LlamaBackend
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


def user_catalogue_path(config: Config) -> Path:
    return config.data_dir / "models.toml"


def open_backend(config: Config) -> tuple[LlamaBackend, str, Path, ModelSpec | None]:
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
        num_gpu_layers=engine_config.n_gpu_layers,
    ))
    name = spec.name if spec else path.stem
    return backend, name, path, spec


def engine_for(backend: LlamaBackend, name: str, config: Config) -> AsyncEngine:
    return AsyncEngine(
        backend,
        model_name=name,
        num_slots=config.engine.parallel,
        slot_ctx=backend.num_ctx // config.engine.parallel,
        num_batch_tokens=config.engine.batch,
        num_kv_cells_total=backend.num_ctx,
        max_waiting=config.engine.max_waiting,
    )


async def load_model(config: Config) -> LoadedModel:
    """Loads in a worker thread, then starts the engine thread on this event loop."""
    started = time.monotonic()
    backend, name, path, spec = await asyncio.to_thread(open_backend, config)
    engine = engine_for(backend, name, config)
    await engine.start()
    template = (spec.chat_template if spec else None) or backend.metadata("tokenizer.chat_template")
    load_s = time.monotonic() - started
    log.info("loaded %s (%s) in %.1f s: %d slots, %d KV cells, %d threads",
             name, backend.describe(), load_s, config.engine.parallel, backend.num_ctx, config.engine.num_threads)
    return LoadedModel(name, path, spec, engine, template, backend.bos_text(), backend.eos_text(), load_s)
