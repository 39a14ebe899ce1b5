"""Ollama's model routes: GET /api/tags, POST /api/show, GET /api/ps, POST /api/pull (NDJSON
progress from the same pull machinery as /admin/models/pull), DELETE /api/delete. Model files and
their GGUF headers are read in worker threads; names are checked as for every other route."""
from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from localllm.chat.families import detect_family
from localllm.config import Config
from localllm.models.catalogue import is_model_ref, local_model_names, open_store
from localllm.models.gguf import GGUFError, GGUFInfo, read_gguf
from localllm.models.manager import LoadedModel, ModelManager, ServedModel
from localllm.models.registry import ModelSpec, UnknownModel, looks_like_hub_ref, split_model_ref
from localllm.models.store import ModelFileError, ModelStore
from localllm.server.errors import ApiError
from localllm.server.model_routes import PullJob, start_pull, stream_pull
from localllm.server.ndjson import LastEventWriter, NdjsonWriter
from localllm.server.ollama_wire import model_name, rfc3339
from localllm.server.schemas import flag, read_json
from localllm.server.state import CONFIG_KEY, MODEL_KEY, model_not_found

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_FOREVER = timedelta(days=365 * 100)
"""expires_at of a model that never unloads (the default model, keep_alive < 0)."""


def setup(app: web.Application, logged: Callable[[Handler], Handler]) -> None:
    """`logged` (ollama_routes): the request log names the protocol."""
    app.router.add_get("/api/tags", logged(tags))
    app.router.add_post("/api/show", logged(show))
    app.router.add_get("/api/ps", logged(ps))
    app.router.add_post("/api/pull", logged(pull))
    app.router.add_delete("/api/delete", logged(delete))


@dataclass(frozen=True, slots=True)
class _File:
    """What Ollama's listings say about a model's file."""
    path: Path | None
    size: int
    sha256: str | None
    quant: str
    info: GGUFInfo | None


def _file_of(store: ModelStore, name: str, loaded: LoadedModel | None) -> _File:
    """Blocking: the model's local file without assembling, hashing or downloading anything."""
    spec = store.catalogue.get(name)
    path, sha256, quant = (loaded.path, getattr(loaded.spec, "sha256", None), "") if loaded else (None, None, "")
    if path is None and spec is not None and (store.models_dir / name / spec.file).is_file():
        path, sha256, quant = store.models_dir / name / spec.file, spec.sha256, spec.quant
    if path is None:
        record = store.find_pulled(name, None)
        if record is not None:
            path, sha256, quant = Path(record.path), record.sha256, record.quant
    info = _header(path)
    size = path.stat().st_size if path is not None and path.is_file() else (spec.size_bytes if spec else 0) or 0
    return _File(path, size, sha256, quant or (info.file_type if info else ""), info)


def _header(path: Path | None) -> GGUFInfo | None:
    if path is None:
        return None
    try:
        return read_gguf(path)
    except (GGUFError, OSError):
        return None


def _details(file: _File) -> dict[str, Any]:
    arch = file.info.architecture if file.info else ""
    return {"parent_model": "", "format": "gguf", "family": arch, "families": [arch] if arch else None,
            "parameter_size": _parameter_size(file.info), "quantization_level": file.quant}


def _parameter_size(info: GGUFInfo | None) -> str:
    if info is None:
        return ""
    count = sum(t.num_elements for t in info.tensors)
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}".replace(".0" + unit, unit)
    return str(count)


def _digest(name: str, file: _File) -> str:
    """The file's sha256 when known; else a stable id of the name (Ollama's is its manifest's digest)."""
    return file.sha256 or hashlib.sha256(name.encode()).hexdigest()


def _mtime(file: _File) -> str:
    try:
        stamp = file.path.stat().st_mtime if file.path is not None else time.time()
    except OSError:
        stamp = time.time()
    return rfc3339(datetime.fromtimestamp(stamp, timezone.utc))


def _served_names(manager: ModelManager) -> dict[str, ServedModel]:
    return {(m.loaded.name if m.loaded else m.ref): m for m in manager.models}


async def tags(request: web.Request) -> web.Response:
    """GET /api/tags: served models, then local ones (bundled, placed or pulled) not loaded."""
    config, manager = request.app[CONFIG_KEY], request.app[MODEL_KEY]
    served = _served_names(manager)

    def listing() -> list[dict[str, Any]]:
        store = open_store(config)
        names = list(served) + [n for n in local_model_names(config) if n not in served]
        entries = []
        for name in names:
            model = served.get(name)
            file = _file_of(store, name, model.loaded if model else None)
            entries.append({"name": name, "model": name, "modified_at": _mtime(file), "size": file.size,
                            "digest": _digest(name, file), "details": _details(file)})
        return entries

    return web.json_response({"models": await asyncio.to_thread(listing)})


async def show(request: web.Request) -> web.Response:
    """POST /api/show {"model"}: details, GGUF facts, the chat template and capabilities."""
    body = await read_json(request)
    name = model_name(body)
    config, manager = request.app[CONFIG_KEY], request.app[MODEL_KEY]
    served = manager.find(name)
    loaded = served.loaded if served else None
    if loaded is None and not is_model_ref(name):
        raise model_not_found(name)
    try:
        file, spec = await asyncio.to_thread(_resolved, config, name, loaded)
    except (UnknownModel, ModelFileError):
        raise model_not_found(name) from None
    template = (loaded.chat_template if loaded else None) or (spec.chat_template if spec else None) \
        or (file.info.chat_template if file.info else None)
    return web.json_response({
        "license": spec.licence if spec else "", "modelfile": f"# served by localllm\nFROM {name}\n",
        "parameters": "", "template": template or "", "details": _details(file), "model_info": _model_info(file),
        "capabilities": _capabilities(template, spec), "modified_at": _mtime(file),
    })


def _resolved(config: Config, name: str, loaded: LoadedModel | None) -> tuple[_File, ModelSpec | None]:
    """Blocking: the file behind `name` (a local model: resolved as a load would, never downloaded)."""
    store = open_store(config)
    if loaded is not None:
        return _file_of(store, name, loaded), loaded.spec
    path, spec = store.resolve(name, allow_paths=False)
    info = _header(path)
    quant = (spec.quant if spec else "") or (info.file_type if info else "")
    return _File(path, path.stat().st_size, spec.sha256 if spec else None, quant, info), spec


def _model_info(file: _File) -> dict[str, Any]:
    info = file.info
    if info is None:
        return {}
    arch = info.architecture
    return {"general.architecture": arch, "general.parameter_count": sum(t.num_elements for t in info.tensors),
            "general.file_type": info.file_type, f"{arch}.context_length": info.context_length,
            f"{arch}.embedding_length": info.embedding_length, f"{arch}.block_count": info.block_count,
            f"{arch}.attention.head_count": info.head_count, f"{arch}.attention.head_count_kv": info.head_count_kv}


def _capabilities(template: str | None, spec: ModelSpec | None) -> list[str]:
    """completion always; with a chat template, tools (native or injected by the family table) and
    thinking when the template writes reasoning markers."""
    if not template:
        return ["completion"]
    family = detect_family(template, spec.template_family if spec is not None else None)  # checked at load
    return ["completion", "tools"] + (["thinking"] if family.reasons else [])


async def ps(request: web.Request) -> web.Response:
    """GET /api/ps: the loaded models, when each would unload, and its context per slot."""
    config, manager = request.app[CONFIG_KEY], request.app[MODEL_KEY]
    loaded = [(m, m.loaded) for m in manager.models if m.loaded is not None]
    now = datetime.now(timezone.utc)

    def listing() -> list[dict[str, Any]]:
        store = open_store(config)
        entries = []
        for served, model in loaded:
            file = _file_of(store, model.name, model)
            entries.append({"name": model.name, "model": model.name, "size": file.size, "digest": _digest(model.name, file),
                            "details": _details(file), "expires_at": rfc3339(now + _remaining(manager, served)),
                            "size_vram": 0, "context_length": model.engine.slot_ctx})
        return entries

    return web.json_response({"models": await asyncio.to_thread(listing)})


def _remaining(manager: ModelManager, served: ServedModel) -> timedelta:
    if served is manager.default or served.keep_alive_s is None:
        return _FOREVER
    idle_s = 0.0 if served.in_flight else time.monotonic() - served.last_used_s
    return timedelta(seconds=max(0.0, served.keep_alive_s - idle_s))


async def pull(request: web.Request) -> web.StreamResponse:
    """POST /api/pull {"model", "stream"?}: NDJSON progress as Ollama sends it (status, digest, total,
    completed; then success, or an `error` line), or one JSON answer with `stream: false`."""
    body = await read_json(request)
    ref = model_name(body)
    stream = flag(body, "stream", True)
    name, quant = ref, None
    if not looks_like_hub_ref(ref) and ":" in ref:
        parts = split_model_ref(ref)
        if parts is None:
            raise model_not_found(ref)
        name, quant = parts
    job = await start_pull(request, name, quant)
    writer = NdjsonWriter(request) if stream else LastEventWriter()
    return await stream_pull(request, job, writer, _Progress(job))


class _Progress:
    """The pull's events (model_routes.stream_pull) in Ollama's words."""

    def __init__(self, job: PullJob) -> None:
        sha256 = job.target.sha256
        self._layer = {"status": f"pulling {sha256[:12]}", "digest": f"sha256:{sha256}"} if sha256 else {"status": "pulling"}
        self._started = self._verifying = False

    def __call__(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        out = [] if self._started else [{"status": "pulling manifest"}]
        self._started = True
        status = event.get("status")
        if status == "downloading":
            total, done = event["total_bytes"], event["downloaded_bytes"]
            out.append({**self._layer, "total": total, "completed": done})
            if total and done >= total and not self._verifying:
                self._verifying = True
                out.append({"status": "verifying sha256 digest"})
        elif status == "done":
            out += [{"status": "writing manifest"}, {"status": "success"}]
        else:
            out.append({"error": event.get("message", "the pull failed")})
        return out


async def delete(request: web.Request) -> web.Response:
    """DELETE /api/delete {"model"}: unloads it if it is loaded and idle, then deletes its files.
    404 for a model with no local files; 409 for the default model and for one loading or serving
    requests (under its name or as NAME:QUANT: the files of every quantisation go)."""
    body = await read_json(request)
    name = model_name(body)
    if not is_model_ref(name):
        raise model_not_found(name)
    manager = request.app[MODEL_KEY]
    users = [m for m in manager.models if _runs_from(m, name)]
    if manager.default in users:
        raise ApiError(409, f"model {name!r} is the model this server serves by default; it cannot be deleted "
                       "while the server runs", param="model", code="model_is_default")
    for served in users:
        if served.loaded is None or not await manager.unload(served.ref):
            raise ApiError(409, f"model {name!r} is loading or serving requests; try again when it is idle",
                           param="model", code="model_busy")
    config = request.app[CONFIG_KEY]
    try:
        removed = await asyncio.to_thread(lambda: open_store(config).remove(name))
    except UnknownModel:
        removed = False
    if not removed:
        raise model_not_found(name)
    return web.Response(status=200)


def _runs_from(served: ServedModel, name: str) -> bool:
    """Whether `served` (loaded or still loading) runs from files that deleting `name` removes:
    it answers to `name`, or its ref is NAME:QUANT of it."""
    parts = None if looks_like_hub_ref(served.ref) else split_model_ref(served.ref)
    return served.answers_to(name) or (parts is not None and parts[0] == name)
