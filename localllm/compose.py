"""The composition root: builds a served model from a config (file, llama.cpp backend, engine,
prefix-state store, memory plan, RPC split) and computes THE memory plan.

Only `server/` (the app factory's default loader, /v1/plan) and the command line import this
module; everything else sees a served model as a `LoadedModel` (models/manager.py). llama.cpp's
bindings are imported inside the functions that need them, so importing the server does not
load llama.cpp (`localllm serve` loads it first on purpose: cli.py says why).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from localllm.cache.prefix_states import PrefixStateConfig, PrefixStateDiskStore
from localllm.chat.families import CALL_AND_REASONING_MARKERS
from localllm.config import Config
from localllm.engine.async_engine import AsyncEngine
from localllm.engine.contracts import ModelBackend
from localllm.models.catalogue import is_model_ref, open_store
from localllm.models.manager import LoadedModel
from localllm.models.plan import ModelFacts, Plan, make_plan
from localllm.models.registry import ModelSpec

if TYPE_CHECKING:
    from localllm.engine.llama_backend import LlamaBackend
    from localllm.engine.llama_backend.rpc import DeviceInfo

log = logging.getLogger(__name__)


# --- The memory plan: one function for `serve`, GET /v1/plan and `localllm plan` ---

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
        if not self.devices:
            return {}
        from localllm.engine.llama_backend import rpc

        return rpc.layer_split(self.devices, self.num_layers, self.n_gpu_layers)

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


def serving_plan(config: Config, path: Path, *, free_vram_bytes: int | None = None,
                 free_ram_bytes: int | None = None) -> OffloadPlan:
    """Blocking: the memory plan `serve` loads `path` with under `config`: free VRAM (measured
    unless given) capped by `vram_budget_mib`, plus the free memory of the configured
    rpc-servers (registered here; BackendError if one is unreachable), f16 KV only
    (the engine allocates f16). GGUFError for a file that is not a valid GGUF."""
    from localllm.models import probe
    from localllm.models.gguf import read_gguf

    vram = probe.free_vram_bytes() if free_vram_bytes is None else free_vram_bytes
    ram = probe.free_ram_bytes() if free_ram_bytes is None else free_ram_bytes
    if config.engine.vram_budget_mib:
        vram = min(vram, config.engine.vram_budget_mib * 2**20)
    devices: list[DeviceInfo] = []
    if config.engine.rpc_servers:
        from localllm.engine.llama_backend import rpc

        devices = rpc.offload_devices(rpc.add_servers(config.engine.rpc_servers))
        vram += sum(d.free_bytes for d in devices if d.endpoint)  # local GPUs are in `vram` already
    facts = ModelFacts.from_gguf(read_gguf(path))
    plan = make_plan(facts, free_vram_bytes=vram, free_ram_bytes=ram, slots=config.engine.parallel,
                     ctx=config.engine.ctx, num_batch=config.engine.batch, allow_q8_kv=False)
    return OffloadPlan(plan, facts.num_layers, devices)


def gpu_layers_for(path: Path, config: Config) -> int:
    """An explicit --n-gpu-layers wins; `auto` asks the memory plan what fits free VRAM now
    (and the rpc-servers' free memory with --rpc)."""
    if config.engine.n_gpu_layers is not None:
        return config.engine.n_gpu_layers
    if not config.engine.rpc_servers:
        from localllm.models import probe

        if probe.free_vram_bytes() == 0:
            return 0  # no GPU: nothing to plan
    offload = serving_plan(config, path)
    log.info("memory plan for %s:\n%s", path.name, offload.explain())
    return offload.n_gpu_layers


# --- Building a served model ---

def open_backend(config: Config, on_progress: Callable[[float], None] | None = None,
                 ) -> tuple[LlamaBackend, str, Path, ModelSpec | None]:
    """Blocking: resolves the model file (assembling the bundled one if needed) and loads it."""
    from localllm.engine.llama_backend import BackendConfig, LlamaBackend

    ref = config.engine.model
    # A model name (as requests give) never resolves to a file path, whatever files exist.
    path, spec = open_store(config).resolve(ref, allow_paths=not is_model_ref(ref))
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
        shown_control_texts=CALL_AND_REASONING_MARKERS,
    ))
    name = spec.name if spec else path.stem
    return backend, name, path, spec


def engine_for(backend: ModelBackend, name: str, config: Config, identity: str | None = None) -> AsyncEngine:
    """An engine over `backend`; with `identity` (the model's), long prompts' KV states persist on disk."""
    store = None
    if identity is not None and config.server.kv_cache_min_tokens > 0:
        store = PrefixStateDiskStore(PrefixStateConfig(
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
        prefix_state_store=store,
    )


async def start_served(backend: ModelBackend, config: Config, *, name: str, path: Path,
                       spec: ModelSpec | None, identity: str, started_s: float | None = None) -> LoadedModel:
    """Wraps an opened backend into a running engine and the served-model record the server sees.
    Tests pass a scripted backend here to get the real wiring without llama.cpp."""
    started_s = time.monotonic() if started_s is None else started_s
    # A worker: the prefix-state store opens SQLite and indexes its entries on disk.
    engine = await asyncio.to_thread(engine_for, backend, name, config, identity)
    await engine.start()
    template = (spec.chat_template if spec else None) or backend.metadata("tokenizer.chat_template")
    tool_use = None if spec and spec.chat_template else backend.metadata("tokenizer.chat_template.tool_use")
    load_s = time.monotonic() - started_s
    log.info("loaded %s (%s) in %.1f s: %d slots, %d KV cells, %d threads",
             name, backend.describe(), load_s, config.engine.parallel, backend.num_ctx, config.engine.num_threads)
    created = int(path.stat().st_mtime) if path.exists() else 0
    return LoadedModel(name, path, spec, engine, template, backend.bos_text(), backend.eos_text(), load_s,
                       identity, created, tool_use_template=tool_use)


async def load_model(config: Config, on_progress: Callable[[float], None] | None = None) -> LoadedModel:
    """The server's model loader: loads in a worker thread, then starts the engine thread on
    this event loop."""
    started_s = time.monotonic()
    backend, name, path, spec = await asyncio.to_thread(open_backend, config, _logging_progress(config, on_progress))
    return await start_served(backend, config, name=name, path=path, spec=spec,
                              identity=model_identity(path, spec), started_s=started_s)


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
    """What makes a model's answers its own: the file's sha256 when known, else path+size+mtime."""
    digest = spec.sha256_for(spec.quant) if spec is not None else None
    if digest:
        return f"sha256:{digest}"
    stat = path.stat()
    return f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
